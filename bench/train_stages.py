"""The three training stages (VAE, LDM, ControlNet) on random batches, stepped in fp32 or bf16 from the same init."""
from __future__ import annotations

import statistics
from typing import Callable, Optional

import torch
from torch import nn

from bench.timing import sync, timed
from controlnet.model import ControlNet, controlled_model_fn
from ddpm.trainer import StepDraws, autocast_context, make_optimizer, step_generator
from ddpm.vae import AutoencoderKL, PatchDiscriminator
from geometry.encodings import encode_control
from run.config import RunConfig
from run.pipeline import LatentDiffusion, make_schedule_from
from run.train_ldm import diffusion_loss
from run.train_vae import VAEWithDiscriminator, vae_step_loss

PROMPTS = ("Female, age in 40s, normal BMI, healthy", "Male, age in 60s, obese, heart failure")
PARITY_STEPS = 3  # optimizer steps compared fp32 vs bf16 from the same init


def precision_context(precision: str, device: torch.device):
    return autocast_context("bf16" if precision == "bf16" else "fp32", device)


class Stage:
    """One stage's trainable module and loss(batch, step) -> scalar on a deterministic random batch of that size."""

    def __init__(self, name: str, module: nn.Module, loss: Callable[[int, int], torch.Tensor],
                 parent: Optional[nn.Module] = None) -> None:
        self.name, self.module, self.loss, self.parent = name, module, loss, parent  # parent: a frozen LDM
        self.init = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def reset(self) -> None:
        self.module.load_state_dict(self.init)

    def use_attention(self, backend: str) -> None:
        """Every attention of the stage (its parent's, the text encoder's included) on ddpm.attention's `backend`."""
        for module in [*self.module.modules(), *(self.parent.modules() if self.parent is not None else [])]:
            if hasattr(module, "backend"):
                module.backend = backend


def _images(batch: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 2, size, size, generator=g) * 2 - 1).to(device)


def _masks(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 4, (batch, 2, size, size), generator=torch.Generator().manual_seed(seed))


def unzero(model: nn.Module) -> nn.Module:
    """torch's default init for the zero-initialised layers (UNet output, ControlNet zero convs): at a zero output
    the loss is ||noise||^2 whatever the precision, and a bf16-vs-fp32 comparison would be trivially equal."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return model


def build_stages(cfg: RunConfig, device: torch.device) -> dict[str, Stage]:
    """vae (at the first adversarial step when the preset has a discriminator), ldm (UNet + text encoder jointly),
    controlnet (frozen LDM). Each built from seed 0, zero-initialised layers re-initialised (unzero)."""
    size, f = cfg.data.preprocess.size, cfg.vae.downsample_factor
    latent = (cfg.vae.latent_channels, size // f, size // f)
    sched = make_schedule_from(cfg)
    torch.manual_seed(0)
    vae = AutoencoderKL(cfg.vae)
    disc = PatchDiscriminator(cfg.vae.in_channels) if cfg.vae.disc_start >= 0 else None
    vae_model = VAEWithDiscriminator(vae, disc).to(device).train()
    vae_step = max(cfg.vae.disc_start, 0)  # the heavier step: adversarial terms on where the preset has them

    def vae_loss(batch: int, step: int) -> torch.Tensor:
        x = _images(batch, size, step, device)
        return vae_step_loss(vae_model, x, StepDraws(step_generator(0, step), batch), vae_step)[0]

    torch.manual_seed(0)
    ldm = unzero(LatentDiffusion(cfg)).to(device).train()

    def z0(batch: int, step: int) -> torch.Tensor:
        return torch.randn(batch, *latent, generator=torch.Generator().manual_seed(step)).to(device)

    def ldm_loss(batch: int, step: int) -> torch.Tensor:
        context = ldm.text(ldm.text.tokenize([PROMPTS[i % 2] for i in range(batch)]).to(device))[0]
        draws = StepDraws(step_generator(0, step), batch)
        return diffusion_loss(ldm.unet, z0(batch, step), context, sched, cfg.diffusion, draws)

    torch.manual_seed(0)
    frozen = unzero(LatentDiffusion(cfg)).to(device).eval().requires_grad_(False)
    net = unzero(ControlNet(frozen.unet, cfg.controlnet, f)).to(device).train()
    with torch.no_grad():
        contexts = frozen.text(frozen.text.tokenize(list(PROMPTS)).to(device))[0]

    def controlnet_loss(batch: int, step: int) -> torch.Tensor:
        control = encode_control(_masks(batch, size, step).long(), cfg.controlnet.control).to(device)
        fn = controlled_model_fn(frozen.unet, net, control)
        context = contexts[torch.arange(batch, device=device) % 2]
        draws = StepDraws(step_generator(0, step), batch)
        return diffusion_loss(fn, z0(batch, step), context, sched, cfg.diffusion, draws)

    return {"vae": Stage("vae", vae_model, vae_loss), "ldm": Stage("ldm", ldm, ldm_loss),
            "controlnet": Stage("controlnet", net, controlnet_loss, parent=frozen)}


def train_steps(stage: Stage, cfg: RunConfig, batch: int, precision: str, steps: int,
                device: torch.device) -> Callable[[], float]:
    """A closure running the next train step (autocast forward, backward, clip, AdamW) -> its loss."""
    params = [p for p in stage.module.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, getattr(cfg, f"{stage.name}_train"))
    counter = iter(range(steps))

    def step() -> float:
        i = next(counter)
        with precision_context(precision, device):
            loss = stage.loss(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.detach()

    return step


def parity_and_speed(stage: Stage, cfg: RunConfig, batch: int, device: torch.device, warmup: int,
                     iters: int) -> dict:
    """fp32 and bf16 from the same init on the same batches: losses of the first steps, step times after warm-up."""
    out = {}
    for precision in ("fp32", "bf16"):
        stage.reset()
        step = train_steps(stage, cfg, batch, precision, max(PARITY_STEPS, warmup) + iters, device)
        losses = [float(step()) for _ in range(PARITY_STEPS)]
        times = timed(step, device, max(0, warmup - PARITY_STEPS), iters)
        out[precision] = {"losses": losses, "step_s": statistics.median(times), "samples": times}
    fp32, bf16 = out["fp32"]["losses"], out["bf16"]["losses"]
    out["max_rel_loss_diff"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(fp32, bf16))
    out["bf16_speedup"] = out["fp32"]["step_s"] / out["bf16"]["step_s"]
    stage.reset()
    return out
