"""Stage `ldm`: train the latent UNet and the text encoder jointly on cached VAE latents."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data.atomic import atomic_write
from data.slices import SliceSet
from ddpm.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from ddpm.distributed import resolve_device, on_main_then_sync
from ddpm.images import save_grid
from ddpm.loss_weighting import loss_weights, weighted_mse
from ddpm.schedulers import NoiseSchedule, add_noise, prediction_target
from ddpm.text_encoder import PromptEmbeddingCache, is_frozen
from ddpm.trainer import StepDraws, train_loop
from run.loader import to_dict
from run.pipeline import LatentDiffusion, Pipeline, generation_kwargs, make_schedule_from
from run.train_vae import encode_latents, load_vae


def cached_latents(vae_path: Path, images: np.ndarray, cache_dir: Path,
                   device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of the training images, computed once per VAE checkpoint."""
    cache = cache_dir / f"latents-{file_sha256(vae_path)}-{len(images)}.safetensors"
    if cache.is_file():
        try:
            stored = load_file(str(cache))
            return stored["mean"].to(device), stored["std"].to(device)
        except (SafetensorError, OSError, KeyError) as err:  # a damaged cache is rebuilt, never a traceback
            warnings.warn(f"rebuilding the latent cache {cache}: {err}")
    vae, _, _ = load_vae(vae_path, device)
    mean, std = encode_latents(vae, images)
    atomic_write(cache, lambda tmp: save_file({"mean": mean.contiguous(), "std": std.contiguous()}, tmp))
    return mean.to(device), std.to(device)


def shared_latents(vae_path: Path, images: np.ndarray, cache_dir: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cached_latents for every process: rank 0 fills the cache, the others then read it (no racing writes)."""
    latents = on_main_then_sync(lambda: cached_latents(vae_path, images, cache_dir, device))
    return latents if latents is not None else cached_latents(vae_path, images, cache_dir, device)


def diffusion_loss(unet_fn, x0: torch.Tensor, context: torch.Tensor, sched: NoiseSchedule, diffusion,
                   draws: StepDraws) -> torch.Tensor:
    """MSE between the network output and the eps/v target at uniformly drawn timesteps, weighted per timestep
    as diffusion.loss_weighting says (none: plain MSE). x0: (B, C, h, w); diffusion: the DiffusionConfig."""
    t = draws.randint(sched.num_train_steps, (x0.shape[0],)).to(x0.device)
    noise = draws.randn(x0.shape).to(x0.device)
    x_t = add_noise(sched, x0, noise, t)
    out, target = unet_fn(x_t, t, context), prediction_target(sched, x0, noise, t, diffusion.prediction)
    weight = loss_weights(sched, t, diffusion.loss_weighting, diffusion.min_snr_gamma, diffusion.prediction)
    return F.mse_loss(out.float(), target.float()) if weight is None else weighted_mse(out, target, weight)


class PromptContexts:
    """Text contexts of training prompts with classifier-free-guidance dropout (prompt -> "" with prob p).

    A frozen encoder runs once per distinct prompt (cached embeddings); a jointly trained one on every step.
    """

    def __init__(self, text: torch.nn.Module, prompts: list[str], p: float) -> None:
        self.text, self.p = text, p
        distinct = sorted(set(prompts))
        position = {q: i for i, q in enumerate(distinct)}
        self.row = torch.tensor([position[q] for q in prompts])  # training sample -> its distinct prompt
        if is_frozen(text):
            cache = PromptEmbeddingCache(text, text.tokenize)
            self.states, self.empty = cache(distinct)[0], cache([""])[0]
        else:
            self.tokens, self.empty_tokens = text.tokenize(distinct), text.tokenize([""])

    def __call__(self, idx: torch.Tensor, draws: StepDraws) -> torch.Tensor:
        """idx: (B,) training rows -> context (B, L, W)."""
        drop = draws.rand((len(idx),)) < self.p
        rows = self.row[idx]
        if is_frozen(self.text):
            return torch.where(drop[:, None, None].to(self.states.device), self.empty, self.states[rows])
        tokens = torch.where(drop[:, None].to(self.tokens.device), self.empty_tokens, self.tokens[rows])
        return self.text(tokens)[0]


def grid_prompts(slices: SliceSet, limit: int = 8) -> list[str]:
    """The most frequent prompt of each health condition: a fixed list for periodic sample grids."""
    frame = slices.attributes.assign(health=slices.attributes["health"].fillna("unknown"))
    prompts = [group["prompt"].value_counts().index[0] for _, group in frame.groupby("health", sort=True)]
    return prompts[:limit]


def train_ldm(cfg, train: SliceSet, vae_path: Path, run_dir: Path, resume: bool = False) -> Path:
    """cfg: RunConfig. Returns `<run_dir>/ldm.safetensors` with EMA weights of UNet + text encoder."""
    device = resolve_device(cfg.device)
    mean, std = shared_latents(vae_path, train.images, run_dir / "cache", device)
    scale = float(load_checkpoint(vae_path, expect_stage="vae")[1]["scale_factor"])
    sched = make_schedule_from(cfg)
    torch.manual_seed(cfg.ldm_train.seed)  # after the latents: a cache miss builds a VAE, which draws numbers
    model = LatentDiffusion(cfg).to(device)
    contexts = PromptContexts(model.text, train.prompts, cfg.diffusion.cond_dropout)

    def loss_fn(idx: torch.Tensor, draws: StepDraws, step: int):
        z0 = (mean[idx] + std[idx] * draws.randn(mean[idx].shape).to(device)) * scale
        loss = diffusion_loss(model.unet, z0, contexts(idx, draws), sched, cfg.diffusion, draws)
        return loss, {}

    vae, _, _ = load_vae(vae_path, device)
    prompts = [p for p in grid_prompts(train) for _ in range(2)]

    def prompt_grid(path: Path) -> None:
        """Two samples per health condition's most frequent prompt, same seeds every time."""
        images = Pipeline(cfg, vae, scale, model.eval(), sched).generate(
            prompts, seed=cfg.ldm_train.seed, **generation_kwargs(cfg.sample))
        model.train()
        save_grid(path, images, labels=prompts, ncols=2)

    meta = {"config": to_dict(cfg), "vae": file_sha256(vae_path), "scale_factor": scale}
    ema, _ = train_loop(stage="ldm-train", model=model, loss_fn=loss_fn, num_samples=len(train),
                        cfg=cfg.ldm_train, run_dir=run_dir / "ldm", meta=meta, resume=resume, device=device,
                        on_checkpoint=lambda step, _: prompt_grid(run_dir / "ldm" / f"samples-step{step:07d}.png"),
                        compile_modules=(model.unet,))
    out = run_dir / "ldm.safetensors"

    def finish() -> None:
        save_checkpoint(out, {"ema": ema.state_dict(), "model": model.state_dict()}, {**meta, "stage": "ldm"})
        ema.copy_to(model)
        prompt_grid(run_dir / "ldm_samples.png")

    on_main_then_sync(finish)
    return out
