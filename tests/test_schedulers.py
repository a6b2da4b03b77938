import math

import pytest
import torch

from data.errors import InputError
from ddpm.schedulers import (add_noise, ddim_step, ddim_timesteps, ddpm_posterior, ddpm_step, make_schedule,
                             predict_x0_eps, prediction_target)

D = torch.float64


def test_linear_and_scaled_linear_closed_forms():
    s = make_schedule("linear", 100, 1e-4, 0.02)
    betas = torch.linspace(1e-4, 0.02, 100, dtype=D)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=0, atol=1e-14)
    s = make_schedule("scaled_linear", 100, 0.00085, 0.012)
    root = s.betas.sqrt()
    assert math.isclose(root[0], 0.00085 ** 0.5, abs_tol=1e-15) and math.isclose(root[-1], 0.012 ** 0.5, abs_tol=1e-15)
    assert torch.allclose(root.diff(), root.diff()[0].expand(99), atol=1e-15)  # linear in sqrt(beta)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), atol=1e-15)
    assert s.alphas_cumprod.dtype == D and s.num_train_steps == 100


def test_cosine_matches_formula_and_is_clipped():
    T = 1000
    s = make_schedule("cosine", T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    unclipped = s.betas < 0.999
    for t in torch.nonzero(unclipped).flatten().tolist()[::97]:
        assert math.isclose(s.alphas_cumprod[t].item(), f((t + 1) / T) / f(0), rel_tol=1e-9)
    assert s.betas.max() <= 0.999 and not unclipped.all()  # the last step hits the clip
    assert (s.alphas_cumprod.diff() < 0).all()


def test_unknown_kind_and_prediction_name_the_field():
    with pytest.raises(InputError, match="schedule"):
        make_schedule("quadratic")
    s = make_schedule("linear", 10)
    x = torch.zeros(2, 3)
    with pytest.raises(InputError, match="prediction"):
        prediction_target(s, x, x, 1, "x0")
    with pytest.raises(InputError, match="prediction"):
        predict_x0_eps(s, x, x, 1, "sample")


def test_q_xt_given_x0_empirical_mean_and_variance_per_sample_t():
    s = make_schedule("scaled_linear", 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 250, 999])
    x0 = torch.tensor([1.5, -0.7, 2.0], dtype=D)[:, None].expand(3, 200_000)
    x_t = add_noise(s, x0, torch.randn(x0.shape, generator=g, dtype=D), t)
    a = s.alphas_cumprod[t]
    n = x0.shape[1]
    # Tolerance: 5 standard errors of the sample mean / variance.
    assert torch.all((x_t.mean(1) - a.sqrt() * x0[:, 0]).abs() < 5 * ((1 - a) / n).sqrt())
    assert torch.all((x_t.var(1) - (1 - a)).abs() < 5 * (1 - a) * math.sqrt(2 / n))


def test_ddpm_posterior_matches_bayes_product_of_gaussians():
    s = make_schedule("linear", 200, 1e-4, 0.02)
    g = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(4, 3, 2, generator=g, dtype=D), torch.randn(4, 3, 2, generator=g, dtype=D)
    t = torch.tensor([1, 17, 100, 199])
    mean, var = ddpm_posterior(s, x0, x_t, t)
    # q(x_{t-1}|x_t,x0) ∝ N(x_t; sqrt(1-b) x_{t-1}, b) N(x_{t-1}; sqrt(a_prev) x0, 1 - a_prev): precisions add.
    b, a_prev = s.betas[t].view(-1, 1, 1), s.alphas_cumprod[t - 1].view(-1, 1, 1)
    precision = (1 - b) / b + 1 / (1 - a_prev)
    expected_mean = ((1 - b).sqrt() * x_t / b + a_prev.sqrt() * x0 / (1 - a_prev)) / precision
    assert torch.allclose(var, 1 / precision, rtol=1e-10, atol=0)
    assert torch.allclose(mean, expected_mean, rtol=1e-10, atol=1e-12)
    mean0, var0 = ddpm_posterior(s, x0, x_t, 0)  # t = 0: the posterior collapses onto x0
    assert torch.allclose(mean0, x0, atol=1e-12) and float(var0) == 0.0


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_conversions_round_trip_exactly(prediction):
    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 2, 4, 4, generator=g, dtype=D), torch.randn(5, 2, 4, 4, generator=g, dtype=D)
    t = torch.tensor([0, 10, 500, 900, 998])
    x_t = add_noise(s, x0, eps, t)
    target = prediction_target(s, x0, eps, t, prediction)
    x0_hat, eps_hat = predict_x0_eps(s, target, x_t, t, prediction)
    assert torch.allclose(x0_hat, x0, rtol=0, atol=1e-10)
    assert torch.allclose(eps_hat, eps, rtol=0, atol=1e-10)


def test_v_definition():
    s = make_schedule("linear", 50)
    x0, eps = torch.ones(1, 3, dtype=D), torch.full((1, 3), 2.0, dtype=D)
    a = s.alphas_cumprod[7]
    assert torch.allclose(prediction_target(s, x0, eps, 7, "v"), a.sqrt() * eps - (1 - a).sqrt() * x0)


def test_ddpm_step_equals_ddim_eta_one_on_the_unit_stride_chain():
    s = make_schedule("scaled_linear", 100)
    g = torch.Generator().manual_seed(3)
    x_t, out = torch.randn(3, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    t = torch.tensor([5, 50, 99])
    ancestral = ddpm_step(s, out, x_t, t, "epsilon", generator=torch.Generator().manual_seed(7))
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=D)
    assert torch.allclose(ancestral, ddim_step(s, out, x_t, t, t - 1, "epsilon", eta=1.0, noise=noise), atol=1e-12)


def test_ddpm_step_adds_no_noise_at_t0():
    s = make_schedule("linear", 10)
    x_t, out = torch.randn(2, 3, dtype=D), torch.randn(2, 3, dtype=D)
    a = ddpm_step(s, out, x_t, 0, "epsilon", generator=torch.Generator().manual_seed(0))
    b = ddpm_step(s, out, x_t, 0, "epsilon", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.allclose(a, predict_x0_eps(s, out, x_t, 0, "epsilon")[0], atol=1e-12)


def test_ddim_timesteps_spacing():
    assert ddim_timesteps(1000, 50, "leading").tolist() == list(range(980, -1, -20))
    assert ddim_timesteps(1000, 50, "trailing").tolist() == list(range(999, 0, -20))
    assert ddim_timesteps(1000, 3, "trailing").tolist() == [999, 666, 332]  # round(1000 - k * 333.33) - 1
    for spacing in ("leading", "trailing", "linspace"):
        steps = ddim_timesteps(1000, 7, spacing)
        assert steps.dtype == torch.long and len(steps) == 7 and (steps.diff() < 0).all()
        assert 0 <= steps.min() and steps.max() <= 999
        assert ddim_timesteps(20, 20, spacing).tolist() == list(range(19, -1, -1))
    assert ddim_timesteps(1000, 20, "leading", 1).tolist() == list(range(951, 0, -50))  # Stable Diffusion's
    for spacing, offset in (("trailing", 1), ("leading", 50), ("leading", -1)):
        with pytest.raises(InputError, match="steps_offset"):
            ddim_timesteps(1000, 20, spacing, offset)
    with pytest.raises(InputError, match="spacing"):
        ddim_timesteps(1000, 10, "middle")
    with pytest.raises(InputError, match="num_steps"):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_with_exact_model_output_jumps_to_x0(prediction):
    s = make_schedule("scaled_linear", 1000)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 3, generator=g, dtype=D), torch.randn(2, 3, generator=g, dtype=D)
    t = torch.tensor([700, 300])
    x_t = add_noise(s, x0, eps, t)
    out = prediction_target(s, x0, eps, t, prediction)
    # To an intermediate step, eta = 0 lands exactly on q's deterministic path with the same eps.
    assert torch.allclose(ddim_step(s, out, x_t, t, t - 200, prediction), add_noise(s, x0, eps, t - 200), atol=1e-10)
    assert torch.allclose(ddim_step(s, out, x_t, t, -1, prediction), x0, atol=1e-10)
    # eta > 0: the sigma term vanishes on the final step to x0.
    assert torch.allclose(ddim_step(s, out, x_t, t, -1, prediction, eta=1.0, noise=torch.ones_like(x0)), x0, atol=1e-10)


def test_ddim_eta_zero_is_deterministic_and_eta_uses_noise():
    s = make_schedule("linear", 100)
    x_t, out = torch.randn(2, 3), torch.randn(2, 3)
    a = ddim_step(s, out, x_t, 60, 40, "epsilon", generator=torch.Generator().manual_seed(0))
    b = ddim_step(s, out, x_t, 60, 40, "epsilon", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    c = ddim_step(s, out, x_t, 60, 40, "epsilon", eta=0.5, noise=torch.zeros(2, 3))
    d = ddim_step(s, out, x_t, 60, 40, "epsilon", eta=0.5, noise=torch.ones(2, 3))
    assert not torch.allclose(c, d) and not torch.allclose(a, c)


@pytest.mark.parametrize("kind", ["scaled_linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_low_precision_steps_round_once(kind, prediction):
    """Coefficients are formed in float64 and cast once: a float32 step is float64's to ~1e-6 relative at every t
    (casting a_t first left 2.6e-5 / 5.3e-4 near t = 0), and bf16 / fp16 steps stay finite (1 - a_0 rounded to 0 in
    bf16 gave 0/0) within a few units of their roundoff u (2^-8, 2^-11) of float32."""
    s = make_schedule(kind, 1000)
    g = torch.Generator().manual_seed(8)
    for t, t_prev in ((999, 949), (500, 450), (2, 1), (1, 0), (0, -1)):
        x64, out64 = torch.randn(2, 3, 4, generator=g, dtype=D), torch.randn(2, 3, 4, generator=g, dtype=D)
        noise64 = torch.randn(2, 3, 4, generator=g, dtype=D)
        steps = {
            "ddpm": lambda x, out, noise: ddim_step(s, out, x, t, t - 1, prediction, eta=1.0, noise=noise),
            "ddim": lambda x, out, noise: ddim_step(s, out, x, t, t_prev, prediction),
            "ddim_eta": lambda x, out, noise: ddim_step(s, out, x, t, t_prev, prediction, eta=0.5, noise=noise),
        }
        for name, step in steps.items():
            exact = step(x64, out64, noise64)
            scale = exact.abs().max()
            low = {dt: step(x64.to(dt), out64.to(dt), noise64.to(dt)) for dt in (torch.float32, torch.bfloat16, torch.float16)}
            assert (low[torch.float32].double() - exact).abs().max() <= 1e-6 * scale, (name, t)
            for dt, u in ((torch.bfloat16, 2.0 ** -8), (torch.float16, 2.0 ** -11)):
                assert low[dt].dtype == dt and torch.isfinite(low[dt]).all(), (name, t, dt)
                # inputs rounded to dt (u each) times coefficients up to ~|x| / sqrt(a_t): a few u of the scale
                ref = step(x64.to(dt).double(), out64.to(dt).double(), noise64.to(dt).double())
                assert (low[dt].double() - ref).abs().max() <= 4 * u * max(scale, 1.0), (name, t, dt)
    x, out = torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(2, 3, dtype=torch.bfloat16)
    assert torch.isfinite(ddpm_step(s, out, x, torch.tensor([0, 1]), prediction, torch.Generator().manual_seed(0))).all()
