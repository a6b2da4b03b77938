"""DPM-Solver++(2M) against the closed-form probability-flow ODE of Gaussian data N(mu, s^2 I).

For Gaussian data the ODE is affine and keeps the z-score: x_t = sqrt(a_t) mu + sqrt(a_t s^2 + 1 - a_t) z along a
path, so the exact end point of a path starting from x at the first timestep is known.
"""
import pytest
import torch

from ddpm.multistep import dpmpp_2m_step
from ddpm.sampling import sample
from ddpm.schedulers import ddim_step, ddim_timesteps, make_schedule, predict_x0_eps

MU, S = 0.5, 0.5
SHAPE = (64, 4, 4, 4)
D = torch.float64


def exact_eps(sched, x, t):
    """E[eps | x_t] for x0 ~ N(MU, S^2 I)."""
    a = sched.alphas_cumprod[t].view(-1, *([1] * (x.ndim - 1)))
    return (1 - a).sqrt() / (a * S * S + 1 - a) * (x - a.sqrt() * MU)


def oracle(sched, prediction):
    def model_fn(x, t, context):
        eps = exact_eps(sched, x, t)
        if prediction == "epsilon":
            return eps
        a = sched.alphas_cumprod[t].view(-1, *([1] * (x.ndim - 1)))
        return a.sqrt() * eps - (1 - a).sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt()  # v = sqrt(a) eps - sqrt(1-a) x0
    return model_fn


def on_path(sched, z, t):
    """The point at timestep t of the ODE path with z-score z (t = -1: the data end, mu + s z)."""
    a = sched.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0, dtype=D)
    return a.sqrt() * MU + (a * S * S + 1 - a).sqrt() * z


def sample_error(sched, sampler, steps, prediction="epsilon", spacing="trailing"):
    """max |sample() - exact ODE end point| from the same starting noise."""
    t0 = int(ddim_timesteps(sched.num_train_steps, steps, spacing)[0])
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=D)
    a = sched.alphas_cumprod[t0]
    exact = on_path(sched, (x_start - a.sqrt() * MU) / (a * S * S + 1 - a).sqrt(), -1)
    out = sample(oracle(sched, prediction), SHAPE, torch.zeros(SHAPE[0], 2, 4), None, sched, sampler=sampler,
                 num_steps=steps, prediction=prediction, spacing=spacing,
                 generator=torch.Generator().manual_seed(0), dtype=D)
    return (out - exact).abs().max().item()


@pytest.mark.parametrize("kind", ["scaled_linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_dpmpp2m_beats_ddim_at_few_steps_and_converges(kind, prediction):
    sched = make_schedule(kind, 1000)
    errors = {steps: sample_error(sched, "dpmpp2m", steps, prediction) for steps in (5, 8, 10, 12, 80)}
    for steps in (5, 8, 10, 12):
        assert errors[steps] < sample_error(sched, "ddim", steps, prediction), (steps, errors)
    assert errors[80] < 0.25 * errors[10], errors


def test_epsilon_and_v_give_the_same_samples():
    sched = make_schedule("scaled_linear", 1000)
    run = lambda p: sample(oracle(sched, p), SHAPE, torch.zeros(SHAPE[0], 2, 4), None, sched,  # noqa: E731
                           sampler="dpmpp2m", num_steps=10, prediction=p, spacing="linspace",
                           generator=torch.Generator().manual_seed(1), dtype=D)
    assert torch.allclose(run("epsilon"), run("v"), atol=1e-9)


def ode_error(sched, solver, steps):
    """max error of the ODE solve between the first and last timestep of linspace (no final jump to t = -1)."""
    ts = ddim_timesteps(1000, steps, "linspace").tolist()
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=D)
    x, d_prev = on_path(sched, z, ts[0]), None
    for i, t in enumerate(ts[:-1]):
        tb = torch.full((SHAPE[0],), t)
        out = exact_eps(sched, x, tb)
        if solver == "ddim":
            x = ddim_step(sched, out, x, tb, ts[i + 1], "epsilon")
        else:
            d = predict_x0_eps(sched, out, x, tb, "epsilon")[0]
            x, d_prev = dpmpp_2m_step(sched, x, d, tb, ts[i + 1], d_prev, ts[i - 1] if i else None), d
    return (x - on_path(sched, z, ts[-1])).abs().max().item()


def test_dpmpp2m_is_second_order_and_ddim_first():
    """Doubling the steps divides the error by ~4 (second order) against ~2 for DDIM (first order)."""
    sched = make_schedule("cosine", 1000)
    assert ode_error(sched, "dpmpp2m", 160) < 0.3 * ode_error(sched, "dpmpp2m", 80)
    assert ode_error(sched, "ddim", 160) > 0.4 * ode_error(sched, "ddim", 80)


def test_first_step_is_ddim():
    """Without a previous prediction the update is DDIM's (both are the exact first-order step)."""
    sched = make_schedule("scaled_linear", 1000)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=D)
    tb = torch.full((SHAPE[0],), 700)
    out = exact_eps(sched, x, tb)
    d = predict_x0_eps(sched, out, x, tb, "epsilon")[0]
    for t_next in (400, -1):
        assert torch.allclose(dpmpp_2m_step(sched, x, d, tb, t_next), ddim_step(sched, out, x, tb, t_next, "epsilon"),
                              atol=1e-12)


@pytest.mark.parametrize("steps", [6, 10])
def test_matches_diffusers_dpmsolver_multistep(steps):
    """Same timesteps (trailing), same oracle: diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, last
    step first order below 15 steps, final sigma 0) lands where ours does. Needs the bench extra."""
    diffusers = pytest.importorskip("diffusers")
    sched = make_schedule("scaled_linear", 1000)
    theirs = diffusers.DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                   timestep_spacing="trailing")
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == ddim_timesteps(1000, steps, "trailing").tolist()
    model = oracle(sched, "epsilon")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    for t in theirs.timesteps:
        x = theirs.step(model(x, torch.full((SHAPE[0],), int(t)), None).float(), t, x).prev_sample
    ours = sample(model, SHAPE, torch.zeros(SHAPE[0], 2, 4), None, sched, sampler="dpmpp2m", num_steps=steps,
                  spacing="trailing", generator=torch.Generator().manual_seed(4))
    assert torch.allclose(ours, x, atol=1e-4), (ours - x).abs().max()
