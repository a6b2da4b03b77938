"""Stage `controlnet`: base UNet and text encoder frozen (EMA weights of the LDM), only the ControlNet trains."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from controlnet.model import ControlNet, controlled_model_fn
from data.slices import SliceSet
from ddpm.checkpoint import file_sha256, save_checkpoint
from ddpm.distributed import resolve_device, on_main_then_sync
from ddpm.images import save_grid
from ddpm.trainer import StepDraws, train_loop
from geometry.encodings import encode_control
from run.loader import to_dict
from run.pipeline import Pipeline, generation_kwargs, load_ldm, make_schedule_from
from run.train_ldm import PromptContexts, diffusion_loss, shared_latents
from run.train_vae import load_vae


def train_controlnet(cfg, train: SliceSet, test: SliceSet, vae_path: Path, ldm_path: Path, run_dir: Path,
                     resume: bool = False) -> Path:
    """cfg: RunConfig. Returns `<run_dir>/controlnet.safetensors`; writes a mask | sample | real grid."""
    device = resolve_device(cfg.device)
    ldm, ldm_meta = load_ldm(ldm_path, device=device)  # frozen, eval mode
    scale = float(ldm_meta["scale_factor"])
    mean, std = shared_latents(vae_path, train.images, run_dir / "cache", device)
    # Masks stay uint8 on the CPU and are encoded per batch: encoded float maps of a whole cohort outgrow a GPU.
    masks = torch.from_numpy(train.masks)
    contexts = PromptContexts(ldm.text, train.prompts, cfg.diffusion.cond_dropout)  # frozen: embedded once
    sched = make_schedule_from(cfg)
    torch.manual_seed(cfg.controlnet_train.seed)  # after loading the LDM and the latents: building models draws numbers
    net = ControlNet(ldm.unet, cfg.controlnet, cfg.vae.downsample_factor).to(device)

    def loss_fn(idx: torch.Tensor, draws: StepDraws, step: int):
        z0 = (mean[idx] + std[idx] * draws.randn(mean[idx].shape).to(device)) * scale
        control = encode_control(masks[idx].long(), cfg.controlnet.control).to(device)
        fn = controlled_model_fn(ldm.unet, net, control)
        return diffusion_loss(fn, z0, contexts(idx, draws), sched, cfg.diffusion, draws), {}

    meta = {"config": to_dict(cfg), "vae": file_sha256(vae_path), "ldm": file_sha256(ldm_path), "scale_factor": scale}
    ema, _ = train_loop(stage="controlnet-train", model=net, loss_fn=loss_fn, num_samples=len(train),
                        cfg=cfg.controlnet_train, run_dir=run_dir / "controlnet", meta=meta, resume=resume,
                        device=device, compile_modules=(net, ldm.unet))
    out = run_dir / "controlnet.safetensors"

    def finish() -> None:
        """The stage checkpoint (EMA weights) and a mask | sample | real grid of held-out cases."""
        save_checkpoint(out, {"ema": ema.state_dict(), "model": net.state_dict()}, {**meta, "stage": "controlnet"})
        ema.copy_to(net)
        vae, _, _ = load_vae(vae_path, device)
        pipe = Pipeline(cfg, vae, scale, ldm, sched, net.eval())
        n = min(8, len(test))
        fake = pipe.generate(test.prompts[:n], test.masks[:n], seed=cfg.controlnet_train.seed,
                             **generation_kwargs(cfg.sample))
        grid_images = np.stack([x for pair in zip(fake, test.images[:n]) for x in pair])
        grid_masks = np.stack([m for m in test.masks[:n] for _ in range(2)])
        labels = [f"{tag}: {p}" for p in test.prompts[:n] for tag in ("gen", "real")]
        save_grid(run_dir / "controlnet_samples.png", grid_images, grid_masks, labels, ncols=2)

    on_main_then_sync(finish)
    return out
