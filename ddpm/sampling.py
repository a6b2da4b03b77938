"""Sampling loops (DDIM, DDPM ancestral, DPM-Solver++(2M)) with fused classifier-free guidance.

`model_fn(x, t, context) -> out` is any denoiser (UNet, UNet + ControlNet closure). Under guidance it is
called ONCE per step on a doubled batch: x: (2B, ...), t: (2B,), context = cat([uncond, cond]) — first
half unconditional — so a closure that adds per-sample inputs (e.g. control images) must repeat them twice.
With a guidance interval (Kynkaanniemi et al. 2024) guidance runs only at the steps whose noise level
sigma_t = sqrt((1 - a_t) / a_t) lies in [lo, hi]; the other steps call the model once, on cond alone.
A control interval (sample.control_interval, applied by controlnet.model.controlled_model_fn) is the same test
for the ControlNet: outside it the UNet runs alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from data.errors import InputError
from data.fields import bounded, check_fields
from ddpm.multistep import dpmpp_2m_step
from ddpm.schedulers import (SPACINGS, Generators, NoiseSchedule, ddim_step, ddim_timesteps, ddpm_step,
                             predict_x0_eps, randn)

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
SAMPLERS = ("ddim", "ddpm", "dpmpp2m")


@dataclass
class SampleSettings:
    """The `sample` config section: how images are drawn (sampler, steps, guidance, ControlNet scale, batch)."""

    sampler: str = "ddim"
    steps: int = bounded(20, lo=1)
    eta: float = bounded(0.0, lo=0)
    guidance: float = bounded(4.0)  # any finite scale (NaN/inf would write NaN samples)
    control_scale: float = bounded(1.0)  # any finite scale
    batch_size: int = bounded(32, lo=1)
    # Timesteps of the strided chain (ddpm.schedulers.ddim_timesteps): linspace and trailing start at t = T - 1,
    # the noise level sampling starts from; leading (+ steps_offset 1 = Stable Diffusion) at T - T/steps.
    # linspace measured best at 10-50 steps (BENCHMARKS.md, "Timestep spacing"); runs before it used leading.
    spacing: str = "linspace"
    steps_offset: int = bounded(0, lo=0)
    precision: str = "fp32"  # "bf16": the denoiser and decoder under bf16 autocast (the chain stays float32)
    # [lo, hi] in sigma = sqrt((1 - a_t) / a_t): guidance only there, one cond-only pass elsewhere; None = all steps.
    # Sigma (not schedule fraction) as the paper, so an interval means the same noise levels at any steps / spacing.
    guidance_interval: Optional[Tuple[float, float]] = None
    # [lo, hi] in sigma: the ControlNet runs only there, the UNet alone elsewhere (late steps refine texture, the
    # anatomy is set); None = all steps. diffusers' control_guidance_end zeroes the scale but still runs the net.
    control_interval: Optional[Tuple[float, float]] = None
    # phi of Lin et al. 2024 (Alg. 2, 0.7 there): the guided output's per-sample std pulled back to the conditional
    # one's, against the over-exposure large guidance gives, above all with a zero-terminal-SNR schedule; 0 = off
    guidance_rescale: float = bounded(0.0, lo=0, hi=1)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError("sampler", f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError("sample.precision", f"expected 'fp32' or 'bf16', got {self.precision!r}")
        if self.spacing not in SPACINGS:
            raise InputError("sample.spacing", f"unknown spacing {self.spacing!r}; expected one of {', '.join(SPACINGS)}")
        check_interval(self.guidance_interval, "sample.guidance_interval")
        check_interval(self.control_interval, "sample.control_interval")
        check_fields(self)


def check_interval(interval: Optional[Sequence[float]], where: str = "interval") -> None:
    """InputError unless interval is None or [lo, hi] with 0 <= lo <= hi (hi may be inf)."""
    if interval is None:
        return
    if len(interval) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval) \
            or not 0 <= interval[0] <= interval[1]:
        raise InputError(where, f"expected [lo, hi] noise levels (sigma) with 0 <= lo <= hi, got {interval!r}")


def in_sigma_interval(sched: NoiseSchedule, t: int, interval: Optional[Sequence[float]]) -> bool:
    """Whether timestep t's noise level sigma_t = sqrt((1 - a_t) / a_t) lies in [lo, hi] (always when None)."""
    if interval is None:
        return True
    a = float(sched.alphas_cumprod[t])
    sigma = ((1.0 - a) / a) ** 0.5 if a > 0 else math.inf  # a zero-terminal-SNR schedule's last step: pure noise
    return interval[0] <= sigma <= interval[1]


def guided_output(model_fn: ModelFn, x: Tensor, t: Tensor, cond: Tensor, uncond: Optional[Tensor],
                  guidance: float, rescale: float = 0.0) -> Tensor:
    """Classifier-free guidance u + g (c - u) from one batched call; guidance == 1 is one pass on cond only.

    x: (B, ...); t: (B,); cond: (B, ...); uncond: (B, ...) or (1, ...) (broadcast to B).
    rescale: phi in [0, 1]; the output becomes phi * out * std(c) / std(out) + (1 - phi) * out, stds per sample.
    """
    if guidance == 1.0:
        return model_fn(x, t, cond)
    if uncond is None:
        raise InputError("guidance", f"guidance {guidance} != 1 needs an unconditional context (uncond), got None")
    uncond = uncond.expand_as(cond) if uncond.shape[0] == 1 else uncond
    out_uncond, out_cond = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond])).chunk(2)
    out = out_uncond + guidance * (out_cond - out_uncond)
    if rescale == 0.0:
        return out
    dims = tuple(range(1, out.ndim))
    ratio = out_cond.float().std(dim=dims, keepdim=True) / out.float().std(dim=dims, keepdim=True).clamp_min(1e-12)
    return (rescale * out * ratio + (1.0 - rescale) * out).to(out.dtype)


@torch.no_grad()
def sample(model_fn: ModelFn, shape: Sequence[int], cond: Tensor, uncond: Optional[Tensor], sched: NoiseSchedule,
           *, sampler: str = "ddim", num_steps: int = 50, eta: float = 0.0, guidance: float = 1.0,
           prediction: str = "epsilon", generator: Generators = None, progress: bool = False,
           spacing: str = "leading", steps_offset: int = 0, device: Optional[torch.device] = None,
           dtype: torch.dtype = torch.float32, guidance_interval: Optional[Sequence[float]] = None,
           guidance_rescale: float = 0.0) -> Tensor:
    """Generate x0: shape (B, ...) from pure noise drawn from `generator` (same seed -> same output).

    generator: one torch.Generator for the batch, or one per sample (then sample i depends only on its own).
    cond: (B, L, D) context; uncond: the null context (B or 1, L, D), needed when guidance != 1.
    sampler "ddim": DDIM on ddim_timesteps(T, num_steps, spacing, steps_offset) with the given eta.
    sampler "ddpm": ancestral sampling. With num_steps == T it runs ddpm_step over every train step;
    with fewer steps it runs the strided chain via ddim_step(eta=1), which IS the DDPM posterior there.
    sampler "dpmpp2m": DPM-Solver++(2M) (ddpm.multistep) on the same timesteps; deterministic, eta unused.
    guidance_interval: [lo, hi] in sigma; guidance only at timesteps inside it (in_sigma_interval), else one cond pass.
    guidance_rescale: phi of guided_output (SampleSettings.guidance_rescale).
    device defaults to cond's device. dtype: what the model is called with; the chain itself (noise, x_t, the
    updates) runs in float32 or wider, so x0 comes back in promote(dtype, float32): a 1000-step chain moves x by
    ~1e-4 per step, below bf16's resolution (2^-8) — a bf16 state would not follow it.
    """
    if sampler not in SAMPLERS:
        raise InputError("sampler", f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if eta < 0:
        raise InputError("eta", f"expected eta >= 0, got {eta}")
    check_interval(guidance_interval, "guidance_interval")
    if not 0.0 <= guidance_rescale <= 1.0:
        raise InputError("guidance_rescale", f"expected a value in [0, 1], got {guidance_rescale}")
    if cond.shape[0] != shape[0]:
        raise InputError("cond", f"batch of cond ({cond.shape[0]}) differs from the sample batch ({shape[0]})")
    device = cond.device if device is None else torch.device(device)
    T = sched.num_train_steps
    timesteps = ddim_timesteps(T, num_steps, spacing, steps_offset).tolist()
    full_chain = sampler == "ddpm" and num_steps == T
    eta = 1.0 if sampler == "ddpm" else eta

    x = randn(shape, generator, device, torch.promote_types(dtype, torch.float32))
    d_prev = None  # dpmpp2m: the previous step's data prediction
    for i, t in enumerate(tqdm(timesteps, desc=f"{sampler} sampling", disable=not progress)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        g = guidance if in_sigma_interval(sched, t, guidance_interval) else 1.0
        out = guided_output(model_fn, x.to(dtype), t_batch, cond, uncond, g, guidance_rescale)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        if full_chain:
            x = ddpm_step(sched, out, x, t_batch, prediction, generator=generator)
        elif sampler == "dpmpp2m":
            d = predict_x0_eps(sched, out.to(x.dtype), x, t_batch, prediction)[0]
            # the previous / next timesteps as (B,) tensors on x's device: every coefficient is formed there
            s_prev = torch.full_like(t_batch, timesteps[i - 1]) if i else None
            x = dpmpp_2m_step(sched, x, d, t_batch, torch.full_like(t_batch, t_prev), d_prev, s_prev)
            d_prev = d
        else:
            x = ddim_step(sched, out, x, t_batch, t_prev, prediction, eta=eta, generator=generator)
    return x
