"""Zero-terminal-SNR rescaling (Lin et al. 2024, Algorithm 1) and the samplers at a_T = 0."""
import numpy as np
import pytest
import torch

from data.errors import InputError
from ddpm.sampling import in_sigma_interval, sample
from ddpm.schedulers import ddim_timesteps, make_schedule, rescale_zero_terminal_snr, snr
from run.config import DiffusionConfig, RunConfig, load_run_config
from run.pipeline import make_schedule_from

MU, S = 0.5, 0.5
SHAPE = (64, 4, 4, 4)


def algorithm_1(betas: np.ndarray) -> np.ndarray:
    """The paper's Algorithm 1, transcribed in numpy: rescaled betas."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
    a0, a_last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - a_last) * a0 / (a0 - a_last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_terminal_snr_is_zero_first_step_kept_and_sqrt_alpha_bar_monotone(kind):
    sched = make_schedule(kind, 1000)
    zt = rescale_zero_terminal_snr(sched)
    assert zt.alphas_cumprod[-1].item() == 0.0 and snr(zt, 999).item() == 0.0
    assert zt.alphas_cumprod[0].item() == pytest.approx(sched.alphas_cumprod[0].item(), rel=1e-14)
    assert (zt.alphas_cumprod.sqrt().diff() < 0).all()
    assert zt.betas[-1].item() == 1.0 and ((zt.betas > 0) & (zt.betas <= 1)).all()
    # betas and alphas_cumprod stay one schedule: a_t = prod (1 - beta)
    assert torch.allclose(torch.cumprod(1.0 - zt.betas, 0), zt.alphas_cumprod, rtol=1e-12, atol=1e-15)
    assert np.allclose(zt.betas.numpy(), algorithm_1(sched.betas.numpy()), rtol=1e-12, atol=1e-14)


def test_equals_diffusers_rescale_zero_terminal_snr():
    pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as theirs

    sched = make_schedule("scaled_linear", 1000)
    assert torch.allclose(rescale_zero_terminal_snr(sched).betas.float(), theirs(sched.betas.float()), atol=1e-6)


def v_oracle(sched):
    """The exact v = sqrt(a) E[eps | x] - sqrt(1 - a) E[x0 | x] for data N(MU, S^2 I): finite at a = 0."""
    def model_fn(x, t, context):
        a = sched.alphas_cumprod[t].view(-1, *([1] * (x.ndim - 1)))
        var = a * S * S + 1 - a
        eps = (1 - a).sqrt() / var * (x - a.sqrt() * MU)
        x0 = MU + a.sqrt() * S * S / var * (x - a.sqrt() * MU)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return model_fn


@pytest.mark.parametrize("sampler,steps", [("ddim", 200), ("dpmpp2m", 100)])
def test_samplers_stay_finite_and_exact_from_pure_noise(sampler, steps):
    """At a_T = 0 the start x_T is pure noise z and the ODE ends at MU + S z: trailing spacing starts there."""
    sched = rescale_zero_terminal_snr(make_schedule("scaled_linear", 1000))
    assert ddim_timesteps(1000, steps, "trailing")[0].item() == 999
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda n: sample(v_oracle(sched), SHAPE, torch.zeros(SHAPE[0], 2, 4), None, sched,  # noqa: E731
                           sampler=sampler, num_steps=n, prediction="v", spacing="trailing",
                           generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = run(steps)
    assert torch.isfinite(out).all()
    error, coarse = (out - (MU + S * z)).abs().max().item(), (run(steps // 5) - (MU + S * z)).abs().max().item()
    assert error < 0.05 and error < 0.5 * coarse, (error, coarse)  # converges to the exact end


def test_guidance_interval_at_pure_noise_is_sigma_infinity():
    sched = rescale_zero_terminal_snr(make_schedule("scaled_linear", 1000))
    assert in_sigma_interval(sched, 999, (0.0, float("inf"))) and not in_sigma_interval(sched, 999, (0.28, 5.42))


def test_config_applies_the_rescale_and_refuses_epsilon():
    cfg = load_run_config(overrides=["diffusion.prediction=v", "diffusion.zero_terminal_snr=true"])
    assert make_schedule_from(cfg).alphas_cumprod[-1].item() == 0.0
    assert make_schedule_from(RunConfig()).alphas_cumprod[-1].item() > 0.0
    with pytest.raises(InputError, match=r"diffusion.zero_terminal_snr.*prediction=v") as err:
        DiffusionConfig(zero_terminal_snr=True)
    assert "\n" not in str(err.value)
