"""KL-regularised autoencoder (LDM "AutoencoderKL") with its losses and an optional PatchGAN discriminator."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.errors import InputError
from data.limits import MAX_BLOCKS, MAX_CHANNELS, MAX_LEVELS, check_width
from data.fields import bounded, check_fields
from ddpm.blocks import Downsample, ResBlock, SpatialSelfAttention, Upsample, cpu_channels_last, group_norm


@dataclass
class VAEConfig:
    # Size caps keep a checkpoint's embedded config from building a model of a size the file merely claims.
    in_channels: int = bounded(2, lo=1, hi=16)
    base_channels: int = bounded(32, lo=1, hi=MAX_CHANNELS)
    channel_mult: tuple = bounded((1, 2, 2), lo=1, hi=16, max_items=MAX_LEVELS)
    latent_channels: int = bounded(4, lo=1, hi=64)
    num_res_blocks: int = bounded(1, lo=1, hi=MAX_BLOCKS)
    attention_in_mid: bool = True
    kl_weight: float = bounded(1e-6, lo=0)
    edge_weight: float = bounded(0.1, lo=0)
    disc_start: int = bounded(-1, lo=-1)  # step at which the discriminator switches on; -1 = never
    disc_weight: float = bounded(0.5, lo=0)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)  # YAML gives lists
        check_fields(self, "vae")
        for name in ("in_channels", "base_channels", "latent_channels", "num_res_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"vae.{name}", f"expected a positive int, got {value!r}")
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise InputError("vae.channel_mult", f"expected positive ints, got {self.channel_mult!r}")
        check_width("vae", self.base_channels, self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class DiagonalGaussian:
    """Posterior N(mean, diag(exp(logvar))).  params: (B, 2*latent, h, w) split into mean and logvar."""

    def __init__(self, params: Tensor) -> None:
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) summed over latent elements -> (B,), >= 0."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class Encoder(nn.Module):
    """(B, in, H, W) -> (B, 2*latent, H/f, W/f) posterior parameters."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cfg.base_channels * mult))
                ch = cfg.base_channels * mult
            if level != len(cfg.channel_mult) - 1:
                layers.append(Downsample(ch))
        self.down = nn.Sequential(*layers)
        attn = SpatialSelfAttention(ch) if cfg.attention_in_mid else nn.Identity()
        self.mid = nn.Sequential(ResBlock(ch, ch), attn, ResBlock(ch, ch))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mid(self.down(self.conv_in(cpu_channels_last(x))))).contiguous()


class Decoder(nn.Module):
    """(B, latent, h, w) -> (B, in, h*f, w*f); mirror of the Encoder with one extra ResBlock per level."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        attn = SpatialSelfAttention(ch) if cfg.attention_in_mid else nn.Identity()
        self.mid = nn.Sequential(ResBlock(ch, ch), attn, ResBlock(ch, ch))
        layers: list[nn.Module] = []
        for level in reversed(range(len(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(ch, cfg.base_channels * cfg.channel_mult[level]))
                ch = cfg.base_channels * cfg.channel_mult[level]
            if level != 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(self.up(self.mid(self.conv_in(cpu_channels_last(z))))))).contiguous()


class AutoencoderKL(nn.Module):
    """x: (B, in_channels, H, W) with H, W divisible by cfg.downsample_factor <-> z: (B, latent, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        f = self.cfg.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise InputError("vae.encode", f"expected (B, {self.cfg.in_channels}, H, W) with H, W divisible by {f}, "
                             f"got {tuple(x.shape)}")
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.cfg.latent_channels:
            raise InputError("vae.decode", f"expected (B, {self.cfg.latent_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def last_layer(self) -> Tensor:
        """Decoder output weight, for the adaptive discriminator weight."""
        return self.decoder.conv_out.weight


def edge_loss(x: Tensor, recon: Tensor) -> Tensor:
    """Mean L1 between finite-difference image gradients (sharp boundaries without a perceptual net)."""
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (recon[..., 1:, :] - recon[..., :-1, :])
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (recon[..., :, 1:] - recon[..., :, :-1])
    return dy.abs().mean() + dx.abs().mean()


def vae_loss(x: Tensor, recon: Tensor, posterior: DiagonalGaussian, cfg: VAEConfig) -> tuple[Tensor, dict]:
    """L1 + edge_weight * edge + kl_weight * KL.  x, recon: (B, C, H, W).

    KL is summed per sample and divided by pixels per sample, the same balance as LDM's summed-over-pixels loss.
    """
    l1 = (x - recon).abs().mean()
    edge = edge_loss(x, recon)
    kl = posterior.kl().mean()
    loss = l1 + cfg.edge_weight * edge + cfg.kl_weight * kl / x[0].numel()
    logs = {"loss": loss.item(), "l1": l1.item(), "edge": edge.item(), "kl": kl.item()}
    return loss, logs


class PatchDiscriminator(nn.Module):
    """Small PatchGAN: (B, in, H, W) -> real/fake logits per overlapping patch (B, 1, h', w').

    GroupNorm instead of BatchNorm so real and fake batches do not share statistics.
    """

    def __init__(self, in_channels: int = 2, base_channels: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), group_norm(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: pushes real logits above 1 and fake ones below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: Tensor) -> Tensor:
    """Generator side of the hinge GAN: raise the discriminator's logits on reconstructions."""
    return -logits_fake.mean()


def disc_active(step: int, cfg: VAEConfig) -> bool:
    """Whether the adversarial terms are on at this training step."""
    return cfg.disc_start >= 0 and step >= cfg.disc_start


def adaptive_disc_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, cfg: VAEConfig) -> Tensor:
    """LDM's balance: scale the GAN gradient to the reconstruction gradient at the decoder's last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return cfg.disc_weight * weight.clamp(0.0, 1e4).detach()


@torch.no_grad()
def compute_scale_factor(latents: Tensor | list[Tensor], std: Optional[Tensor] = None) -> float:
    """1 / std of the latents, so scaled latents have unit variance for the diffusion model.

    std: the posterior std of each latent (same shape). The diffusion model trains on posterior samples
    mean + std * eps, whose variance is Var(mean) + E[std^2] (eps independent of both): used in closed form.
    """
    if isinstance(latents, (list, tuple)):
        latents = torch.cat([z.flatten() for z in latents])
    var = latents.double().var().item() if latents.numel() > 1 else 0.0
    if std is not None:
        var += std.double().square().mean().item()
    std_all = math.sqrt(var) if var >= 0 else float("nan")
    if not 0.0 < std_all < float("inf"):  # also rejects NaN
        raise InputError("latents", f"need at least two differing finite values to compute a std, got std={std_all}")
    return 1.0 / std_all
