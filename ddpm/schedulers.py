"""Diffusion noise schedules and single-step updates (DDPM ancestral, DDIM), stateless and batch-vectorised.

Notation (Ho et al. 2020; Song et al. 2021): a_t = alphas_cumprod[t] = prod_{s<=t} (1 - beta_s);
q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I). Timesteps t are ints or (B,) LongTensors (one per sample).
The schedule is kept in float64 and every update coefficient is formed there (1 - a_t, ratios, products) and
cast once to the dtype of the tensors it multiplies: in bf16 a_0 = 0.99915 rounds to 1 and 1 - a_0 to 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from data.errors import InputError

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")
PREDICTIONS = ("epsilon", "v")
SPACINGS = ("leading", "trailing", "linspace")
Timestep = Union[int, Tensor]


@dataclass
class NoiseSchedule:
    """betas: (T,) float64; alphas_cumprod: (T,) float64."""

    betas: Tensor
    alphas_cumprod: Tensor

    @property
    def num_train_steps(self) -> int:
        return int(self.betas.shape[0])


def _cosine_alpha_bar(s: Tensor) -> Tensor:
    """Nichol & Dhariwal (2021) f(s) for s = t / T in [0, 1], offset 0.008; a_t = f((t+1)/T) / f(0)."""
    return torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def make_schedule(kind: str = "scaled_linear", num_train_steps: int = 1000,
                  beta_start: float = 0.00085, beta_end: float = 0.012) -> NoiseSchedule:
    """Betas for "linear", "scaled_linear" (linear in sqrt(beta), as Stable Diffusion) or "cosine"."""
    if kind not in SCHEDULE_KINDS:
        raise InputError("schedule", f"unknown noise schedule {kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")
    if not isinstance(num_train_steps, int) or num_train_steps < 1:
        raise InputError("num_train_steps", f"expected a positive integer, got {num_train_steps!r}")
    if kind != "cosine" and not 0.0 < beta_start <= beta_end < 1.0:
        raise InputError("beta_start/beta_end", f"expected 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    T = num_train_steps
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    else:
        f = _cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T)
        # Clipping avoids beta = 1 (a singular last step) as in the paper.
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=0.999)
    return NoiseSchedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


def rescale_zero_terminal_snr(sched: NoiseSchedule) -> NoiseSchedule:
    """The schedule with a_{T-1} = 0 exactly and a_0 kept (Lin et al. 2024, Algorithm 1).

    sqrt(a_t) is shifted so its last value is 0 and scaled so its first is unchanged: an affine map, so it stays
    monotone. Training then sees pure noise at the last step, the noise sampling starts from (only the v or x0
    prediction is defined there: eps at SNR 0 carries no information about x0).
    """
    root = sched.alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_cumprod = root ** 2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return NoiseSchedule(betas=1.0 - alphas, alphas_cumprod=alphas_cumprod)


def snr(sched: NoiseSchedule, t: Timestep) -> Tensor:
    """float64 signal-to-noise ratio a_t / (1 - a_t) ((B,) for a (B,) t); 0 at a zero-terminal-SNR last step."""
    a = _at(sched.alphas_cumprod, t)
    return a / (1.0 - a)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise InputError("prediction", f"unknown prediction type {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def _at(values: Tensor, t: Timestep) -> Tensor:
    """values[t] in float64 on t's device ((B,) for a (B,) t, scalar for an int); t = -1 means 1.0 (clean)."""
    t = torch.as_tensor(t, dtype=torch.long, device=values.device if not isinstance(t, Tensor) else t.device)
    v = values.to(t.device)
    return torch.where(t >= 0, v[t.clamp(min=0)], torch.ones((), dtype=v.dtype, device=v.device))


def _cast(coef: Tensor, like: Tensor) -> Tensor:
    """A float64 coefficient, (B,) or scalar, as (B, 1, ..., 1) in like's dtype/device: the one rounding step."""
    if coef.ndim == 1:
        coef = coef.reshape(-1, *([1] * (like.ndim - 1)))
    return coef.to(device=like.device, dtype=like.dtype)


def _x0_eps_coefs(a: Tensor, prediction: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float64 (x0_x, x0_out, eps_x, eps_out): x0_hat = x0_x x_t + x0_out out, eps_hat = eps_x x_t + eps_out out."""
    _check_prediction(prediction)
    if prediction == "epsilon":  # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
        return a.rsqrt(), -((1.0 - a) / a).sqrt(), torch.zeros_like(a), torch.ones_like(a)
    # x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0 form a rotation; invert it.
    return a.sqrt(), -(1.0 - a).sqrt(), (1.0 - a).sqrt(), a.sqrt()


def add_noise(sched: NoiseSchedule, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
    """Sample of q(x_t | x_0): sqrt(a_t) x0 + sqrt(1 - a_t) noise. x0, noise: (B, ...); t: int or (B,)."""
    a = _at(sched.alphas_cumprod, t)
    return _cast(a.sqrt(), x0) * x0 + _cast((1.0 - a).sqrt(), x0) * noise


def prediction_target(sched: NoiseSchedule, x0: Tensor, noise: Tensor, t: Timestep, prediction: str) -> Tensor:
    """Training target: noise for "epsilon"; v = sqrt(a_t) eps - sqrt(1 - a_t) x0 for "v"."""
    _check_prediction(prediction)
    if prediction == "epsilon":
        return noise
    a = _at(sched.alphas_cumprod, t)
    return _cast(a.sqrt(), x0) * noise - _cast((1.0 - a).sqrt(), x0) * x0


def predict_x0_eps(sched: NoiseSchedule, model_out: Tensor, x_t: Tensor, t: Timestep,
                   prediction: str) -> tuple[Tensor, Tensor]:
    """Exact (x0_hat, eps_hat) implied by the model output at (x_t, t)."""
    x0_x, x0_out, eps_x, eps_out = (_cast(c, x_t) for c in _x0_eps_coefs(_at(sched.alphas_cumprod, t), prediction))
    return x0_x * x_t + x0_out * model_out, eps_x * x_t + eps_out * model_out


def _posterior_coefs(sched: NoiseSchedule, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float64 (c_x0, c_xt, variance) of q(x_{t-1} | x_t, x_0) = N(c_x0 x0 + c_xt x_t, variance)."""
    a_t, a_prev, beta_t = _at(sched.alphas_cumprod, t), _at(sched.alphas_cumprod, t - 1), _at(sched.betas, t)
    return (a_prev.sqrt() * beta_t / (1.0 - a_t), (1.0 - beta_t).sqrt() * (1.0 - a_prev) / (1.0 - a_t),
            beta_t * (1.0 - a_prev) / (1.0 - a_t))


def ddpm_posterior(sched: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Timestep) -> tuple[Tensor, Tensor]:
    """Mean (B, ...) and variance (B, 1, ..., 1) of q(x_{t-1} | x_t, x_0); the variance is 0 at t = 0."""
    c_x0, c_xt, variance = _posterior_coefs(sched, torch.as_tensor(t, dtype=torch.long, device=x_t.device))
    return _cast(c_x0, x_t) * x0 + _cast(c_xt, x_t) * x_t, _cast(variance, x_t)


Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn(shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of `shape`; a list of generators draws each batch row from its own one.

    Draws happen on the generator's device, so a CPU seed gives the same noise whatever device it ends on;
    per-row generators make a sample independent of the batch it lands in.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise InputError("generator", f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)


def _randn_like(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


def ddpm_step(sched: NoiseSchedule, model_out: Tensor, x_t: Tensor, t: Timestep, prediction: str,
              generator: Generators = None) -> Tensor:
    """Ancestral step x_t -> x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) (posterior variance); no noise at t = 0."""
    t = torch.as_tensor(t, dtype=torch.long, device=x_t.device)
    x0_x, x0_out, _, _ = _x0_eps_coefs(_at(sched.alphas_cumprod, t), prediction)
    c_x0, c_xt, variance = _posterior_coefs(sched, t)
    # mean = c_x0 x0_hat + c_xt x_t with x0_hat substituted: coefficients combined in float64, cast once
    mean = _cast(c_x0 * x0_x + c_xt, x_t) * x_t + _cast(c_x0 * x0_out, x_t) * model_out
    return mean + _cast(variance.sqrt(), x_t) * _randn_like(x_t, generator)


def ddim_timesteps(num_train_steps: int, num_steps: int, spacing: str = "leading", offset: int = 0) -> Tensor:
    """Descending (num_steps,) LongTensor of sampling timesteps, spaced like diffusers' DDIMScheduler.

    leading: k * (T // n) + offset (ends at offset; Stable Diffusion: offset 1, first t = 951 at 20 steps);
    trailing: round(T - k * T / n) - 1 (starts at T - 1, the noise level sampling starts from);
    linspace: round(linspace(0, T - 1, n)). offset shifts every timestep (diffusers' steps_offset, leading only).
    """
    if spacing not in SPACINGS:
        raise InputError("spacing", f"unknown timestep spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_train_steps:
        raise InputError("num_steps", f"expected an integer in [1, {num_train_steps}], got {num_steps!r}")
    T, n = num_train_steps, num_steps
    k = torch.arange(n, dtype=torch.float64)
    if spacing == "leading":
        steps = (k * (T // n)).flip(0)
    elif spacing == "trailing":
        steps = torch.round(T - k * (T / n)) - 1
    else:
        steps = torch.round(torch.linspace(0, T - 1, n, dtype=torch.float64)).flip(0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or int(steps[0]) + offset > T - 1:
        raise InputError("steps_offset", f"expected an integer >= 0 keeping the {spacing} timesteps (first "
                                         f"{int(steps[0])}) <= {T - 1}, got {offset!r}")
    return steps.long() + offset


def ddim_step(sched: NoiseSchedule, model_out: Tensor, x_t: Tensor, t: Timestep, t_prev: Timestep,
              prediction: str, eta: float = 0.0, noise: Optional[Tensor] = None,
              generator: Generators = None) -> Tensor:
    """DDIM update x_t -> x_{t_prev} (Song et al. eq. 12); t_prev = -1 means a_prev = 1 (step to x0).

    eta = 0 is deterministic; eta = 1 is the DDPM posterior on the (strided) chain. The sigma-term noise
    is `noise` if given, else drawn from `generator`.
    """
    a_t, a_prev = _at(sched.alphas_cumprod, t), _at(sched.alphas_cumprod, t_prev)
    x0_x, x0_out, eps_x, eps_out = _x0_eps_coefs(a_t, prediction)
    sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt()
    c_eps = (1.0 - a_prev - sigma ** 2).clamp(min=0).sqrt()
    # x_prev = sqrt(a_prev) x0_hat + c_eps eps_hat (+ sigma noise), as one float64 pair of coefficients on (x_t, out)
    c_x, c_out = a_prev.sqrt() * x0_x + c_eps * eps_x, a_prev.sqrt() * x0_out + c_eps * eps_out
    x_prev = _cast(c_x, x_t) * x_t + _cast(c_out, x_t) * model_out
    if eta > 0:
        noise = _randn_like(x_t, generator) if noise is None else noise
        return x_prev + _cast(sigma, x_t) * noise
    return x_prev
