"""Per-timestep weights of the diffusion training loss: none (plain MSE) or min-SNR-gamma.

Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy": the x0-space weight
min(SNR_t, gamma), expressed for the target actually regressed (an eps error is SNR_t times an x0 error, a v error
SNR_t + 1 times), so min(SNR_t, gamma) / SNR_t for eps and min(SNR_t, gamma) / (SNR_t + 1) for v: the many easy
low-noise steps no longer dominate the gradient. SNR_t = a_t / (1 - a_t) (ddpm.schedulers.snr).
"""
from __future__ import annotations

from torch import Tensor

from data.errors import InputError
from ddpm.schedulers import NoiseSchedule, Timestep, _check_prediction, snr

LOSS_WEIGHTINGS = ("none", "min_snr")


def min_snr_weight(sched: NoiseSchedule, t: Timestep, gamma: float, prediction: str) -> Tensor:
    """float64 weights ((B,) for a (B,) t): min(SNR, gamma) / SNR (eps) or min(SNR, gamma) / (SNR + 1) (v).

    For eps at SNR = 0 the weight is undefined (the config refuses eps with a zero-terminal-SNR schedule).
    """
    _check_prediction(prediction)
    if not gamma > 0:
        raise InputError("diffusion.min_snr_gamma", f"expected a number > 0, got {gamma!r}")
    ratio = snr(sched, t)
    clipped = ratio.clamp(max=gamma)
    return clipped / ratio if prediction == "epsilon" else clipped / (ratio + 1.0)


def weighted_mse(out: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """mean_b weight_b * mean((out_b - target_b)^2) in float32. out, target: (B, ...); weight: (B,)."""
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    return (weight.to(per_sample) * per_sample).mean()


def loss_weights(sched: NoiseSchedule, t: Tensor, weighting: str, gamma: float, prediction: str) -> Tensor | None:
    """The weights of `weighting` at t ((B,) float64), or None for "none" (plain MSE, unchanged)."""
    if weighting not in LOSS_WEIGHTINGS:
        raise InputError("diffusion.loss_weighting", f"expected one of {', '.join(LOSS_WEIGHTINGS)}, got {weighting!r}")
    return None if weighting == "none" else min_snr_weight(sched, t, gamma, prediction)

