"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data-prediction form.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", Algorithm 2.
With alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t) and lambda_t = log(alpha_t / sigma_t) (half the log-SNR), the
exact solution of the ODE from s to t is x_t = (sigma_t / sigma_s) x_s + alpha_t int_{lambda_s}^{lambda_t}
e^{-lambda} x0_theta dlambda. The solver approximates x0_theta over the step from the current and the previous
data prediction D, D_prev (one network call per step, the previous one reused):

    h = lambda_t - lambda_s,  r = h_prev / h,  D' = (1 + 1 / (2 r)) D - 1 / (2 r) D_prev
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D'

The first step (no D_prev) and the step to the clean data (t = -1: sigma = 0, h = inf) use D' = D, which is DDIM
(first order); every other step is second order. Coefficients are formed in float64 (ddpm.schedulers' rule).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ddpm.schedulers import NoiseSchedule, Timestep, _at, _cast


def _alpha_sigma_lambda(sched: NoiseSchedule, t: Timestep) -> tuple[Tensor, Tensor, Tensor]:
    """float64 alpha_t, sigma_t, lambda_t (lambda = +inf at t = -1, the clean end)."""
    a = _at(sched.alphas_cumprod, t)
    alpha, sigma = a.sqrt(), (1.0 - a).sqrt()
    return alpha, sigma, torch.log(alpha) - torch.log(sigma)


def dpmpp_2m_step(sched: NoiseSchedule, x_s: Tensor, d: Tensor, s: Timestep, t: Timestep,
                  d_prev: Optional[Tensor] = None, s_prev: Optional[Timestep] = None) -> Tensor:
    """One DPM-Solver++(2M) update x_s -> x_t (t < s; t = -1 means the clean end, a = 1).

    x_s, d: (B, ...) the state and its data prediction x0_hat at s; d_prev: the data prediction at the previous
    evaluated timestep s_prev (> s), or None for the first step. s, t, s_prev: ints or (B,) LongTensors.
    """
    alpha_t, sigma_t, lam_t = _alpha_sigma_lambda(sched, t)
    _, sigma_s, lam_s = _alpha_sigma_lambda(sched, s)
    h = lam_t - lam_s
    # at t = -1: sigma_t = 0 and e^{-h} = 0, so x_t = alpha_t d (finite; computed directly to avoid inf * 0)
    ratio = torch.where(sigma_t > 0, sigma_t / sigma_s, torch.zeros_like(sigma_t))
    gain = -alpha_t * torch.expm1(-h)  # alpha_t (1 - e^{-h}) >= 0
    x_t = _cast(ratio, x_s) * x_s + _cast(gain, x_s) * d
    if d_prev is None or s_prev is None:
        return x_t
    h_prev = lam_s - _alpha_sigma_lambda(sched, s_prev)[2]
    half_over_r = torch.where(sigma_t > 0, 0.5 * h / h_prev, torch.zeros_like(h))  # 1 / (2 r); first order at t = -1
    return x_t + _cast(gain * half_over_r, x_s) * (d - d_prev)
