"""Ours vs the references the benchmark compares against (diffusers, MONAI, pytorch-fid, torchmetrics).

Needs the `bench` extra; skipped where it is not installed (CI installs only `.[test]`).

Scheduler choices: our sampler's timesteps are diffusers' DDIMScheduler(timestep_spacing=..., steps_offset=...)
(sample.spacing, default "linspace"; the step tests use "leading" with no offset) and it steps to x0 at the end
(a_prev = 1, set_alpha_to_one=True). Stable Diffusion's scheduler config (steps_offset=1, set_alpha_to_one=False)
shifts every timestep by one and ends at a_0 instead of 1; ddim_step reproduces it too when given those
(t, t_prev) pairs (test below).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("monai")
scipy_linalg = pytest.importorskip("scipy.linalg")

from bench import build_refs as refs  # noqa: E402
from bench.cases import diffusers_step, reference_ddim_loop  # noqa: E402
from bench.convert import controlnet_to_diffusers, unet_to_diffusers  # noqa: E402
from controlnet.model import ControlNetConfig  # noqa: E402
from ddpm.sampling import sample  # noqa: E402
from ddpm.schedulers import (NoiseSchedule, ddim_step, ddim_timesteps, ddpm_posterior, ddpm_step,  # noqa: E402
                             make_schedule, predict_x0_eps)
from ddpm.unet import UNetConfig  # noqa: E402
from ddpm.vae import VAEConfig  # noqa: E402
from evaluation.fid import feature_statistics, frechet_distance  # noqa: E402

T = 1000
PREDICTIONS = [("epsilon", "epsilon"), ("v", "v_prediction")]


def ddim_reference(**kw):
    return diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, clip_sample=False, **kw)


def schedule_of(ref) -> NoiseSchedule:
    """The reference's own float32 schedule in our container: the step tests then compare the update formulas
    alone (diffusers' float32 cumprod drifts ~1e-5 from our float64 one at t=999, see the schedule test)."""
    return NoiseSchedule(betas=ref.betas.double(), alphas_cumprod=ref.alphas_cumprod.double())


def test_scaled_linear_schedule_matches_diffusers():
    ours = make_schedule("scaled_linear", T)
    ref = ddim_reference()
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 20, 50])
def test_ddim_timesteps_match_diffusers(spacing, steps):
    ref = ddim_reference(timestep_spacing=spacing, steps_offset=0)
    ref.set_timesteps(steps)
    assert ddim_timesteps(T, steps, spacing).tolist() == ref.timesteps.tolist()
    if spacing == "leading":  # steps_offset shifts leading timesteps only (SD: 1)
        ref = ddim_reference(timestep_spacing=spacing, steps_offset=1)
        ref.set_timesteps(steps)
        assert ddim_timesteps(T, steps, spacing, 1).tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("ours_pred,ref_pred", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(ours_pred, ref_pred, eta):
    steps = 20
    ref = ddim_reference(timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True, prediction_type=ref_pred)
    sched = schedule_of(ref)
    ref.set_timesteps(steps)
    timesteps = ddim_timesteps(T, steps).tolist()
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(timesteps):
        x, out, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        t_prev = timesteps[i + 1] if i + 1 < steps else -1  # -1: a_prev = 1 = diffusers' final alpha
        mine = ddim_step(sched, out, x, t, t_prev, ours_pred, eta=eta, noise=noise)
        theirs = ref.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=2e-5)


def test_ddim_step_reproduces_stable_diffusion_offset_config():
    steps = 50
    ref = ddim_reference(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    sched = schedule_of(ref)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(1)
    for t in ref.timesteps.tolist():
        x, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        t_prev = max(t - T // steps, 0)  # below 0 diffusers uses alphas_cumprod[0] (set_alpha_to_one=False)
        torch.testing.assert_close(ddim_step(sched, out, x, t, t_prev, "epsilon"), ref.step(out, t, x).prev_sample,
                                   rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("ours_pred,ref_pred", PREDICTIONS)
def test_ddpm_step_matches_diffusers_full_chain(ours_pred, ref_pred):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, clip_sample=False, variance_type="fixed_small",
                                  prediction_type=ref_pred)
    sched = schedule_of(ref)
    ref.set_timesteps(T)
    g = torch.Generator().manual_seed(2)
    for t in (999, 600, 100, 1, 0):
        x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        mine = ddpm_step(sched, out, x, t, ours_pred, generator=torch.Generator().manual_seed(t))
        theirs = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        x0_64 = predict_x0_eps(sched, out.double(), x.double(), t, ours_pred)[0]
        mean, var = ddpm_posterior(sched, x0_64, x.double(), t)
        exact = mean + var.sqrt() * torch.randn(x.shape, generator=torch.Generator().manual_seed(t)).double()
        # ours forms its coefficients in float64 and rounds once: float32-exact at every t (measured <= 3.4e-7)
        torch.testing.assert_close(mine.double(), exact, rtol=1e-6, atol=1e-6)
        # at t <= 1 diffusers forms 1 - a_t (a_0 = 0.99915) in float32: its result sits ~8e-5 from the float64 value
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-4 if t <= 1 else 2e-5)


def test_strided_ddpm_is_ddim_eta_one_as_in_diffusers():
    """sample(sampler="ddpm", num_steps < T) runs ddim_step(eta=1): diffusers' strided DDPMScheduler agrees."""
    steps = 25
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, clip_sample=False, variance_type="fixed_small")
    sched = schedule_of(ref)
    ref.set_timesteps(steps)
    timesteps = ddim_timesteps(T, steps).tolist()
    assert timesteps == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(3)
    for i, t in enumerate(timesteps):
        x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        t_prev = timesteps[i + 1] if i + 1 < steps else -1
        mine = ddim_step(sched, out, x, t, t_prev, "epsilon", eta=1.0, generator=torch.Generator().manual_seed(t))
        theirs = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=2e-5)


# ---- Frechet distance ---------------------------------------------------------------------------------------

def pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0 fid_score.calculate_frechet_distance (Apache-2.0), verbatim but for the asserts.

    Copied, not imported: pytorch-fid depends on torchvision, which the CPU torch pin cannot take.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = scipy_linalg.sqrtm(sigma1.dot(sigma2))  # pytorch-fid passes disp=False (deprecated): same matrix
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy_linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _feature_sets(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, as Inception's are
    return rng.normal(size=(n, d)) @ mix, rng.normal(0.3, 1.2, size=(n, d)) @ mix


@pytest.mark.parametrize("n,d", [(400, 16), (300, 64)])
def test_frechet_distance_matches_pytorch_fid(n, d):
    a, b = _feature_sets(n, d, seed=d)
    stats = (*feature_statistics(a), *feature_statistics(b))
    ours = frechet_distance(*stats)
    assert ours == pytest.approx(pytorch_fid_frechet_distance(*stats), rel=1e-8, abs=1e-10)


def test_frechet_distance_matches_torchmetrics():
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")
    a, b = _feature_sets(400, 16, seed=5)

    class Features(torch.nn.Module):  # the "images" handed to the metric are already features
        num_features = 16

        def forward(self, x):
            return x

    metric = torchmetrics_fid.FrechetInceptionDistance(feature=Features())
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    ours = frechet_distance(*feature_statistics(b), *feature_statistics(a))
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)


def test_frechet_distance_singular_covariances_near_pytorch_fid():
    """Fewer samples than dimensions: both covariances singular; sqrtm is less accurate there, ours stays real."""
    a, b = _feature_sets(20, 48, seed=7)
    stats = (*feature_statistics(a), *feature_statistics(b))
    ours = frechet_distance(*stats)
    assert np.isfinite(ours) and ours >= 0
    assert ours == pytest.approx(pytorch_fid_frechet_distance(*stats), rel=1e-4)


# ---- the bench's models compute the same function as diffusers' ---------------------------------------------

def _small_setup() -> refs.BenchSetup:
    unet = UNetConfig(base_channels=32, channel_mult=(1, 2), attention_levels=(False, True), num_heads=2,
                      context_dim=24)
    return refs.BenchSetup("small", unet, ControlNetConfig(hint_channels=(8, 16)), VAEConfig(base_channels=16),
                           image_size=32, context_len=5)


def _randomise(model: torch.nn.Module) -> None:
    """Random weights everywhere (zero-initialised layers would make the comparison vacuous)."""
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.data.copy_(0.1 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def test_unet_and_controlnet_equal_diffusers_with_our_weights():
    setup = _small_setup()
    unet, ref_unet = refs.ours_unet(setup), refs.diffusers_unet(setup)
    _randomise(unet)
    ref_unet.load_state_dict(unet_to_diffusers(unet.state_dict(), setup.unet))
    net, ref_net = refs.ours_controlnet(setup, unet), refs.diffusers_controlnet(setup)
    _randomise(net)
    ref_net.load_state_dict(controlnet_to_diffusers(net.state_dict(), setup.unet))
    g = torch.Generator().manual_seed(1)
    size = setup.latent_size
    x, c = torch.randn(2, 4, size, size, generator=g), torch.randn(2, setup.context_len, 24, generator=g)
    t = torch.tensor([3, 871])
    control = torch.rand(2, setup.control_channels, setup.image_size, setup.image_size, generator=g)
    down, mid = net(x, t, c, control)
    ref_down, ref_mid = ref_net(x, t, encoder_hidden_states=c, controlnet_cond=control, return_dict=False)
    assert len(down) == len(ref_down)
    for mine, theirs in zip(down + [mid], list(ref_down) + [ref_mid]):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    out = unet(x, t, c, down, mid)
    assert out.abs().max() > 0.1  # a real function of the inputs, not the zero-init output
    ref_out = ref_unet(x, t, encoder_hidden_states=c, down_block_additional_residuals=ref_down,
                       mid_block_additional_residual=ref_mid).sample
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


def test_parameter_counts_equal_or_gap_fully_explained():
    for row in refs.param_table(_small_setup()):
        assert row["unexplained"] == 0, row
        if row["impl"] == "diffusers" and row["model"] in ("unet", "controlnet"):
            assert row["diff_pct"] == 0, row


def test_our_sampler_equals_diffusers_pipeline_loop():
    """The bench's ddim_sample row: same weights, same noise, guidance 4, 6 steps -> the same latents."""
    setup = _small_setup()
    unet, ref_unet = refs.ours_unet(setup), refs.diffusers_unet(setup)
    _randomise(unet)
    ref_unet.load_state_dict(unet_to_diffusers(unet.state_dict(), setup.unet))
    g = torch.Generator().manual_seed(4)
    cond = torch.randn(2, setup.context_len, 24, generator=g)
    uncond = torch.randn(1, setup.context_len, 24, generator=g)
    shape = (2, 4, setup.latent_size, setup.latent_size)
    with torch.no_grad():
        mine = sample(unet, shape, cond, uncond, make_schedule("scaled_linear", T), num_steps=6, guidance=4.0,
                      generator=torch.Generator().manual_seed(0))
        fwd = lambda x, t, c: ref_unet(x, t, encoder_hidden_states=c).sample  # noqa: E731
        ref = ddim_reference(timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True)
        theirs = reference_ddim_loop(fwd, ref, diffusers_step, shape, torch.cat([uncond.expand_as(cond), cond]), 6)
    assert (mine - torch.randn(shape, generator=torch.Generator().manual_seed(0))).abs().max() > 0.1  # it moved
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
