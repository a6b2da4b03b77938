"""Trained models bundled for generation: VAE + text encoder + UNet (+ ControlNet) -> images from prompts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from controlnet.model import ControlNet, controlled_model_fn
from data.errors import InputError
from ddpm.checkpoint import file_sha256, load_checkpoint, model_state
from ddpm.sampling import SampleSettings, sample
from ddpm.schedulers import NoiseSchedule, make_schedule, rescale_zero_terminal_snr
from ddpm.text_encoder import build_text_encoder
from ddpm.unet import UNet
from ddpm.vae import AutoencoderKL
from geometry.encodings import encode_control
from run.config import RunConfig
from run.loader import from_dict
from run.train_vae import load_vae


class LatentDiffusion(nn.Module):
    """The jointly trained pair: text encoder + latent UNet (the stage-`ldm` model)."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.text = build_text_encoder(cfg.text)
        self.unet = UNet(cfg.unet)


def make_schedule_from(cfg) -> NoiseSchedule:
    d = cfg.diffusion
    sched = make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)
    return rescale_zero_terminal_snr(sched) if d.zero_terminal_snr else sched


@dataclass
class Pipeline:
    cfg: object  # RunConfig the models were trained with
    vae: AutoencoderKL
    scale_factor: float
    ldm: LatentDiffusion
    schedule: NoiseSchedule
    controlnet: Optional[ControlNet] = None

    @property
    def device(self) -> torch.device:
        return next(self.ldm.parameters()).device

    @torch.no_grad()
    def context(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.ldm.text(self.ldm.text.tokenize(list(prompts)))[0]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], masks: Optional[np.ndarray] = None, seed: int | Sequence[int] = 0,
                 sampler: str = "ddim", steps: int = 20, eta: float = 0.0, guidance: float = 4.0,
                 control_scale: float = 1.0, progress: bool = False, spacing: str = "linspace",
                 steps_offset: int = 0, guidance_interval: Optional[Sequence[float]] = None,
                 control_interval: Optional[Sequence[float]] = None, guidance_rescale: float = 0.0) -> np.ndarray:
        """prompts: B strings; masks: (B, 2, S, S) labels or None -> images (B, 2, S, S) in [-1, 1].

        seed: one per sample, or an int s meaning seeds s, s+1, ...; each sample draws all its noise from its
        own generator, so it does not depend on the batch it is generated in (resume, batch size).
        spacing, steps_offset: the sampling timesteps; guidance_interval / control_interval: where guidance / the
        ControlNet runs; guidance_rescale: phi of ddpm.sampling.guided_output (SampleSettings).
        """
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else [int(s) for s in seed]
        size = self.cfg.data.preprocess.size
        f = self.vae.cfg.downsample_factor
        cond = self.context(prompts)
        uncond = self.context([""])
        control = None
        if masks is not None and self.controlnet is not None:
            control = encode_control(torch.as_tensor(np.asarray(masks)).long(), self.controlnet.cfg.control).to(self.device)
        fn = controlled_model_fn(self.ldm.unet, self.controlnet, control, control_scale, self.schedule, control_interval)
        shape = (len(prompts), self.vae.cfg.latent_channels, size // f, size // f)
        z = sample(fn, shape, cond, uncond, self.schedule, sampler=sampler, num_steps=steps, eta=eta,
                   guidance=guidance, prediction=self.cfg.diffusion.prediction, spacing=spacing,
                   steps_offset=steps_offset, generator=[torch.Generator().manual_seed(s) for s in seeds],
                   progress=progress, guidance_interval=guidance_interval, guidance_rescale=guidance_rescale)
        return self.vae.decode(z / self.scale_factor).clamp(-1, 1).float().cpu().numpy()


def generation_kwargs(s: SampleSettings) -> dict:
    """Pipeline.generate's sampling arguments from a `sample` section (batch_size and precision are the caller's)."""
    return {"sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance": s.guidance,
            "control_scale": s.control_scale, "spacing": s.spacing, "steps_offset": s.steps_offset,
            "guidance_interval": s.guidance_interval, "control_interval": s.control_interval,
            "guidance_rescale": s.guidance_rescale}


def _config_of(meta: dict, where: str):
    return from_dict(RunConfig, meta["config"], f"{where}: config")


def load_ldm(path: Path, use_ema: bool = True, device: torch.device = torch.device("cpu")) -> tuple[LatentDiffusion, dict]:
    states, meta = load_checkpoint(path, expect_stage="ldm")
    ldm = LatentDiffusion(_config_of(meta, str(path)))
    ldm.load_state_dict(model_state(states, "ema" if use_ema else "model"))
    return ldm.to(device).eval().requires_grad_(False), meta


def check_parent(meta: dict, path: Path, key: str, parent: Path) -> None:
    """A model fits only the exact parent it was trained on (the LDM its VAE's latents, a ControlNet its LDM)."""
    trained_on, given = meta.get(key), file_sha256(parent)
    if trained_on is not None and trained_on != given:
        raise InputError(path, f"was trained on the {key} checkpoint with sha256 {trained_on}, but {parent} has "
                               f"sha256 {given} (another run or config); pass the {key} checkpoint of the same run")


def load_controlnet(path: Path, unet: UNet, use_ema: bool = True,
                    ldm_path: Optional[Path] = None) -> tuple[ControlNet, dict]:
    """ldm_path: the LDM checkpoint `unet` comes from; refused unless it is the one this ControlNet was trained on."""
    states, meta = load_checkpoint(path, expect_stage="controlnet")
    if ldm_path is not None:
        check_parent(meta, path, "ldm", ldm_path)
    cfg = _config_of(meta, str(path))
    net = ControlNet(unet, cfg.controlnet, cfg.vae.downsample_factor)
    net.load_state_dict(model_state(states, "ema" if use_ema else "model"))
    device = next(unet.parameters()).device
    return net.to(device).eval().requires_grad_(False), meta


def load_pipeline(vae_path: Path, ldm_path: Path, controlnet_path: Optional[Path] = None, use_ema: bool = True,
                  device: torch.device = torch.device("cpu")) -> Pipeline:
    vae, scale, _ = load_vae(vae_path, device)
    ldm, meta = load_ldm(ldm_path, use_ema, device)
    check_parent(meta, ldm_path, "vae", vae_path)
    cfg = _config_of(meta, str(ldm_path))
    controlnet = load_controlnet(controlnet_path, ldm.unet, use_ema, ldm_path)[0] if controlnet_path else None
    return Pipeline(cfg, vae, scale, ldm, make_schedule_from(cfg), controlnet)
