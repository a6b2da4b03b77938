"""Stage `vae`: train the KL autoencoder on preprocessed slices; save the latent scale factor with it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from data.atomic import atomic_write_bytes
from data.slices import SliceSet
from ddpm.checkpoint import load_checkpoint, model_state, save_checkpoint
from ddpm.distributed import resolve_device, on_main_then_sync
from ddpm.images import save_grid
from ddpm.trainer import StepDraws, train_loop
from ddpm.vae import VAEConfig
from ddpm.vae import (AutoencoderKL, PatchDiscriminator, adaptive_disc_weight, compute_scale_factor, disc_active,
                      generator_adv_loss, hinge_d_loss, vae_loss)
from evaluation.diversity import ms_ssim_batch
from run.loader import from_dict, to_dict


class VAEWithDiscriminator(torch.nn.Module):
    """Both trained by one optimizer: each loss term is routed so its gradient reaches only its own side."""

    def __init__(self, vae: AutoencoderKL, disc: PatchDiscriminator | None) -> None:
        super().__init__()
        self.vae = vae
        self.disc = disc


def vae_step_loss(model: VAEWithDiscriminator, x: torch.Tensor, draws: StepDraws, step: int) -> tuple[torch.Tensor, dict]:
    posterior = model.vae.encode(x)
    noise = draws.randn(posterior.mean.shape).to(x.device)
    recon = model.vae.decode(posterior.mean + posterior.std * noise)
    loss, logs = vae_loss(x, recon, posterior, model.vae.cfg)
    if model.disc is not None and disc_active(step, model.vae.cfg):
        frozen = {k: v.detach() for k, v in model.disc.named_parameters()}
        g_loss = generator_adv_loss(functional_call(model.disc, frozen, (recon,)))  # no grad into the disc
        weight = adaptive_disc_weight(loss, g_loss, model.vae.last_layer(), model.vae.cfg)
        d_loss = hinge_d_loss(model.disc(x), model.disc(recon.detach()))  # no grad into the VAE
        loss = loss + weight * g_loss + d_loss
        logs.update(g_loss=g_loss.item(), d_loss=d_loss.item())
    return loss, logs


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """images: (N, 2, S, S) -> posterior (mean, std) on the CPU, each (N, latent, S/f, S/f)."""
    vae.eval()
    device = next(vae.parameters()).device
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        post = vae.encode(torch.from_numpy(images[start:start + batch_size]).to(device))
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, C, S, S) in [-1, 1] -> decode(encode(x).mode()), clamped to [-1, 1], float32, same shape."""
    vae.eval()
    device = next(vae.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).to(device)
        out.append(vae.decode(vae.encode(x).mode()).clamp(-1, 1).float().cpu())
    return torch.cat(out).numpy()


def reconstruction_metrics(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 64) -> dict:
    """PSNR (data range 2 for [-1, 1]) and MS-SSIM of decode(encode(x).mode()) on held-out images."""
    x, recon = torch.from_numpy(images), torch.from_numpy(reconstruct(vae, images, batch_size))
    psnr = 10 * torch.log10(4.0 / (recon - x).pow(2).flatten(1).mean(1).clamp_min(1e-12))
    frames = lambda t: t.reshape(-1, 1, *t.shape[2:])  # noqa: E731 - each frame scored separately
    ssim = torch.cat([ms_ssim_batch(frames(recon[i:i + batch_size]), frames(x[i:i + batch_size]))
                      for i in range(0, len(x), batch_size)])
    return {"psnr_db": psnr.mean().item(), "ms_ssim": ssim.mean().item(), "n": len(images)}


def load_vae(path: Path, device: torch.device = torch.device("cpu")) -> tuple[AutoencoderKL, float, dict]:
    """-> (vae in eval mode, latent scale factor, checkpoint meta)."""
    states, meta = load_checkpoint(path, expect_stage="vae")
    vae = AutoencoderKL(from_dict(VAEConfig, meta["config"]["vae"], f"{path}: vae"))
    state = model_state(states, "ema")
    vae.load_state_dict({k[len("vae."):]: v for k, v in state.items() if k.startswith("vae.")})
    return vae.to(device).eval().requires_grad_(False), float(meta["scale_factor"]), meta


def train_vae(cfg, train: SliceSet, test: SliceSet, run_dir: Path, resume: bool = False) -> Path:
    """cfg: RunConfig. Returns `<run_dir>/vae.safetensors` (EMA weights + scale factor + held-out metrics)."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.vae_train.seed)
    vae = AutoencoderKL(cfg.vae)
    disc = PatchDiscriminator(cfg.vae.in_channels) if cfg.vae.disc_start >= 0 else None
    model = VAEWithDiscriminator(vae, disc).to(device)
    images = torch.from_numpy(train.images).to(device)
    meta = {"config": to_dict(cfg)}
    ema, final = train_loop(stage="vae-train", model=model, num_samples=len(images), cfg=cfg.vae_train,
                            run_dir=run_dir / "vae", meta=meta, resume=resume, device=device,
                            loss_fn=lambda idx, draws, step: vae_step_loss(model, images[idx], draws, step),
                            compile_modules=(vae.encoder, vae.decoder), find_unused=disc is not None)
    ema.copy_to(model)
    out = run_dir / "vae.safetensors"
    on_main_then_sync(lambda: finish_vae(vae, train, test, meta, run_dir, out))
    return out


def finish_vae(vae: AutoencoderKL, train: SliceSet, test: SliceSet, meta: dict, run_dir: Path, out: Path) -> None:
    """Latent scale factor, held-out metrics, reconstruction grid and the stage checkpoint `out` (EMA weights)."""
    device = next(vae.parameters()).device
    mean, std = encode_latents(vae, train.images)
    scale = compute_scale_factor(mean, std)  # of posterior samples: what the LDM trains on
    metrics = reconstruction_metrics(vae, test.images)
    if not math.isfinite(metrics["psnr_db"]):
        metrics["psnr_db"] = None
    with torch.no_grad():
        recon = vae.decode(vae.encode(torch.from_numpy(test.images[:8]).to(device)).mode()).clamp(-1, 1).float().cpu().numpy()
    save_grid(run_dir / "vae_reconstructions.png", np.concatenate([test.images[:8], recon]),
              labels=["real"] * min(8, len(test)) + ["recon"] * len(recon), ncols=4)
    save_checkpoint(out, {"ema": {f"vae.{k}": v for k, v in vae.state_dict().items()}},
                    {**meta, "stage": "vae", "scale_factor": scale, "heldout": metrics})
    atomic_write_bytes(run_dir / "vae_metrics.json", json.dumps({"scale_factor": scale, **metrics}, indent=1).encode())
