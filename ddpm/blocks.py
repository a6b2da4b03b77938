"""Building blocks shared by the VAE and the UNet: norm, ResBlock, resampling, timestep embedding, transformer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.attention import Attention


def cpu_channels_last(x: Tensor) -> Tensor:
    """NHWC on CPU, where oneDNN's convolutions then skip per-layer layout reorders (BENCHMARKS.md: VAE encode and
    decode 11-29 % and Inception features 35 % less time). CUDA keeps NCHW until that is measured on a GPU."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def group_norm(channels: int, max_groups: int = 32, min_group_size: int = 4) -> nn.GroupNorm:
    """GroupNorm with 32 groups at SD widths; narrow (test) models keep >= min_group_size channels per group."""
    groups = max(1, min(max_groups, channels // min_group_size))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.  t: (B,) -> (B, dim) as [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Sinusoid of width dim followed by an MLP to emb_dim.  t: (B,) -> (B, emb_dim)."""

    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """norm-SiLU-conv, norm modulated by the time embedding (scale, shift), SiLU-dropout-conv, plus a skip.

    Scale-shift after the norm (ADM): an embedding added before a GroupNorm is partly normalised away.

    x: (B, in_ch, H, W), emb: (B, emb_dim) or None -> (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.emb_proj is not None and emb is not None:
            scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv.  (B, C, H, W) -> (B, C, H/2, W/2) for even H, W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (no checkerboard artefacts of transposed convs).  (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all pixels with a residual (VAE mid block).  (B, C, H, W) -> same."""

    def __init__(self, channels: int, backend: str = "sdpa", chunk_size: int = 1024) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, num_heads=1, backend=backend, chunk_size=chunk_size)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        return x + self.attn(tokens).reshape(b, h, w, c).permute(0, 3, 1, 2)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020).  (..., dim_in) -> (..., dim_out)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class TransformerBlock(nn.Module):
    """Pre-LN [self-attention, cross-attention to context, GEGLU feed-forward], each with a residual.

    x: (B, L, dim), context: (B, Lc, context_dim) -> (B, L, dim).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, backend: str = "sdpa",
                 chunk_size: int = 1024, dropout: float = 0.0, ff_mult: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, num_heads, backend, chunk_size)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, num_heads, backend, chunk_size)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(GEGLU(dim, ff_mult * dim), nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, proj_in, TransformerBlock over pixels as tokens, zero-initialised proj_out, residual.

    x: (B, C, H, W), context: (B, Lc, context_dim) -> (B, C, H, W).
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int, backend: str = "sdpa",
                 chunk_size: int = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.block = TransformerBlock(channels, context_dim, num_heads, backend, chunk_size, dropout)
        self.proj_out = zero_module(nn.Linear(channels, channels))  # block starts as identity

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (B, C, H, W) -> (B, HW, C); a free view for channels_last inputs
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
        tokens = self.proj_out(self.block(tokens, context))
        return x + tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class EmbedSequential(nn.ModuleList):
    """A UNet step: runs its layers in order, giving emb to ResBlocks and context to SpatialTransformers.

    h: (B, C, H, W), emb: (B, E), context: (B, Lc, D) -> (B, C', H', W').
    """

    def forward(self, h: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h
