"""Latent-diffusion UNet with cross-attention to a text context, split into encode/decode for a ControlNet."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from data.errors import InputError
from data.limits import MAX_BLOCKS, MAX_CHANNELS, MAX_LEVELS, MAX_WIDTH, check_width
from data.fields import bounded, check_fields
from ddpm.attention import check_backend
from ddpm.blocks import (Downsample, EmbedSequential, ResBlock, SpatialTransformer, TimestepEmbedding, Upsample,
                         group_norm, zero_module)


@dataclass
class UNetConfig:
    # Size caps keep a checkpoint's embedded config from building a model of a size the file merely claims.
    in_channels: int = bounded(4, lo=1, hi=64)
    out_channels: int = bounded(4, lo=1, hi=64)
    base_channels: int = bounded(64, lo=1, hi=MAX_CHANNELS)
    channel_mult: tuple = bounded((1, 2, 2), lo=1, hi=16, max_items=MAX_LEVELS)
    num_res_blocks: int = bounded(1, lo=1, hi=MAX_BLOCKS)
    attention_levels: tuple = bounded((False, True, True), max_items=MAX_LEVELS)
    num_heads: int = bounded(4, lo=1, hi=64)
    context_dim: int = bounded(128, lo=1, hi=MAX_WIDTH)
    attention_backend: str = "sdpa"  # ddpm.attention.BACKENDS: "fused" keeps torch's kernels for CPU training too
    attention_chunk: int = bounded(1024, lo=1)
    gradient_checkpointing: bool = False
    dropout: float = bounded(0.0, lo=0, hi=1, hi_open=True)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)  # YAML gives lists
        check_fields(self, "unet")
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "num_heads", "context_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"unet.{name}", f"expected a positive int, got {value!r}")
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise InputError("unet.channel_mult", f"expected positive ints, got {self.channel_mult!r}")
        if len(self.attention_levels) != len(self.channel_mult):
            raise InputError("unet.attention_levels", f"expected {len(self.channel_mult)} flags (one per "
                             f"channel_mult level), got {len(self.attention_levels)}")
        # the middle block always attends, so the deepest level needs divisible channels too
        for level, mult in enumerate(self.channel_mult):
            if (self.attention_levels[level] or level == len(self.channel_mult) - 1) \
                    and (self.base_channels * mult) % self.num_heads:
                raise InputError("unet.num_heads", f"{self.base_channels * mult} channels at level {level} are not "
                                 f"divisible by num_heads={self.num_heads}")
        check_width("unet", self.base_channels, self.channel_mult)
        check_backend(self.attention_backend, self.attention_chunk)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class UNet(nn.Module):
    """eps/v-prediction network.  x: (B, in, h, w), t: (B,), context: (B, L, context_dim) -> (B, out, h, w).

    Skip list (as in the SD UNet): conv_in's output, then the output of every entry of down_blocks
    (each ResBlock[+SpatialTransformer] and each Downsample), in order; decode consumes it from the end,
    one skip per up_blocks entry.  skip_channels() gives their channel counts for ControlNet's zero convs.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base, emb_dim = cfg.base_channels, 4 * cfg.base_channels
        self.time_embed = TimestepEmbedding(base, emb_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

        ch, skip_chs = base, [base]
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, base * mult, emb_dim, cfg.dropout)]
                ch = base * mult
                if cfg.attention_levels[level]:
                    layers.append(self._transformer(ch))
                self.down_blocks.append(EmbedSequential(layers))
                skip_chs.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.down_blocks.append(EmbedSequential([Downsample(ch)]))
                skip_chs.append(ch)
        self._skip_channels = list(skip_chs)

        self.mid_block = EmbedSequential([ResBlock(ch, ch, emb_dim, cfg.dropout), self._transformer(ch),
                                          ResBlock(ch, ch, emb_dim, cfg.dropout)])

        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chs.pop(), base * cfg.channel_mult[level], emb_dim, cfg.dropout)]
                ch = base * cfg.channel_mult[level]
                if cfg.attention_levels[level]:
                    layers.append(self._transformer(ch))
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.up_blocks.append(EmbedSequential(layers))

        # zero-initialised so the untrained model predicts 0 and starts from a stable loss
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def _transformer(self, ch: int) -> SpatialTransformer:
        c = self.cfg
        return SpatialTransformer(ch, c.context_dim, c.num_heads, c.attention_backend, c.attention_chunk, c.dropout)

    def skip_channels(self) -> list[int]:
        """Channels of each tensor in encode's skip list, in order."""
        return list(self._skip_channels)

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)

    def _check_inputs(self, x: Tensor, t: Tensor | float, context: Tensor) -> Tensor:
        """Validate shapes; returns t as a (B,) tensor."""
        c, f = self.cfg, self.cfg.downsample_factor
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise InputError("unet.x", f"expected (B, {c.in_channels}, h, w) with h, w divisible by {f}, "
                             f"got {tuple(x.shape)}")
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.context_dim:
            raise InputError("unet.context", f"expected ({x.shape[0]}, L, {c.context_dim}), got {tuple(context.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise InputError("unet.t", f"expected timesteps of shape ({x.shape[0]},) or a scalar, got {tuple(t.shape)}")
        return t

    def encode(self, x: Tensor, t: Tensor | float, context: Tensor,
               hint: Tensor | None = None) -> tuple[list[Tensor], Tensor, Tensor]:
        """-> (skips, h_mid, emb).  hint: (B, base, h, w) added after conv_in (where ControlNet injects its control)."""
        t = self._check_inputs(x, t, context)
        emb = self.time_embed(t)
        h = self.conv_in(x)
        if hint is not None:
            h = h + hint
        skips = [h]
        for block in self.down_blocks:
            h = self._run(block, h, emb, context)
            skips.append(h)
        return skips, self._run(self.mid_block, h, emb, context), emb

    def decode(self, h_mid: Tensor, skips: list[Tensor], emb: Tensor, context: Tensor) -> Tensor:
        """Up path consuming skips from the end.  -> (B, out_channels, h, w)."""
        skips, h = list(skips), h_mid
        for block in self.up_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)

    def forward(self, x: Tensor, t: Tensor | float, context: Tensor, down_residuals: list[Tensor] | None = None,
                mid_residual: Tensor | None = None) -> Tensor:
        """down_residuals (one per skip, shapes as encode's skips) and mid_residual are ControlNet outputs."""
        skips, h, emb = self.encode(x, t, context)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise InputError("unet.down_residuals", f"expected {len(skips)} tensors, got {len(down_residuals)}")
            skips = [s + r for s, r in zip(skips, down_residuals)]
        if mid_residual is not None:
            h = h + mid_residual
        return self.decode(h, skips, emb, context)
