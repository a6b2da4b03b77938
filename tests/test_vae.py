"""ddpm.vae: shapes for both downsampling factors, closed-form KL, loss properties, GAN helpers, scale factor."""
import pytest
import torch

from data.errors import InputError
from ddpm.vae import (AutoencoderKL, DiagonalGaussian, PatchDiscriminator, VAEConfig, adaptive_disc_weight,
                      compute_scale_factor, disc_active, edge_loss, generator_adv_loss, hinge_d_loss, vae_loss)


def _tiny(channel_mult=(1, 2, 2), **kw) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAEConfig(in_channels=2, base_channels=16, channel_mult=channel_mult, latent_channels=4, **kw))


@pytest.mark.parametrize("channel_mult,factor", [((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_encode_decode_shapes(channel_mult, factor):
    vae = _tiny(channel_mult)
    assert vae.cfg.downsample_factor == factor
    x = torch.randn(2, 2, 32, 24)
    with torch.no_grad():
        posterior = vae.encode(x)
        assert posterior.mean.shape == (2, 4, 32 // factor, 24 // factor)
        assert posterior.sample().shape == posterior.mode().shape
        assert vae.decode(posterior.mode()).shape == x.shape
        recon, post = vae(x)
    assert recon.shape == x.shape and post.kl().shape == (2,)


def test_no_mid_attention_variant_runs():
    vae = _tiny(attention_in_mid=False)
    with torch.no_grad():
        assert vae(torch.randn(1, 2, 16, 16), sample_posterior=False)[0].shape == (1, 2, 16, 16)


def test_kl_closed_form():
    assert torch.equal(DiagonalGaussian(torch.zeros(3, 8, 4, 4)).kl(), torch.zeros(3))
    # logvar 0: KL = 0.5 * sum(mean^2)
    mean = torch.randn(2, 4, 3, 3)
    params = torch.cat([mean, torch.zeros_like(mean)], dim=1)
    torch.testing.assert_close(DiagonalGaussian(params).kl(), 0.5 * mean.pow(2).sum(dim=(1, 2, 3)))
    # mean 0, var s^2: KL per element = 0.5 * (s^2 - 1 - log s^2)
    logvar = torch.full((1, 4, 2, 2), 1.5)
    kl = DiagonalGaussian(torch.cat([torch.zeros_like(logvar), logvar], dim=1)).kl()
    torch.testing.assert_close(kl, torch.tensor([16 * 0.5 * (torch.e ** 1.5 - 1 - 1.5)]))


def test_kl_nonnegative_and_logvar_clamped():
    params = torch.randn(4, 8, 5, 5) * 10
    assert (DiagonalGaussian(params).kl() >= 0).all()
    extreme = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 1000.0)], dim=1)
    post = DiagonalGaussian(extreme)
    assert torch.isfinite(post.std).all() and torch.isfinite(post.kl()).all()


def test_sample_is_reproducible_and_has_the_posterior_moments():
    params = torch.cat([torch.full((1, 2, 64, 64), 3.0), torch.full((1, 2, 64, 64), 2 * torch.tensor(0.5).log())], 1)
    post = DiagonalGaussian(params)
    a = post.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, post.sample(torch.Generator().manual_seed(1)))
    assert abs(a.mean().item() - 3.0) < 0.03 and abs(a.std().item() - 0.5) < 0.03


def test_vae_loss_terms():
    cfg = VAEConfig()
    x = torch.randn(2, 2, 16, 16)
    post = DiagonalGaussian(torch.zeros(2, 8, 4, 4))
    loss_same, logs = vae_loss(x, x, post, cfg)
    assert logs["l1"] == 0 and logs["edge"] == 0 and loss_same.item() == 0
    loss_diff, logs = vae_loss(x, x + 0.3 * torch.randn_like(x), post, cfg)
    assert torch.isfinite(loss_diff) and loss_diff > loss_same and logs["edge"] > 0
    # a KL > 0 posterior adds exactly kl_weight * KL / pixels-per-sample
    post_kl = DiagonalGaussian(torch.cat([torch.ones(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)], dim=1))
    loss_kl, logs = vae_loss(x, x, post_kl, cfg)
    assert logs["kl"] == pytest.approx(32.0)
    assert loss_kl.item() == pytest.approx(cfg.kl_weight * 32.0 / (2 * 16 * 16))


def test_edge_loss_ignores_constant_offset_but_sees_blur():
    x = torch.zeros(1, 1, 8, 8)
    x[..., :, 4:] = 1.0  # a vertical edge
    assert edge_loss(x, x + 0.5).item() == 0
    blurred = x.clone()
    blurred[..., :, 3:5] = 0.5
    assert edge_loss(x, blurred).item() > 0


def test_bad_inputs_raise_input_error():
    vae = _tiny()
    with pytest.raises(InputError, match="divisible by 4"):
        vae.encode(torch.randn(1, 2, 30, 32))
    with pytest.raises(InputError, match="vae.encode"):
        vae.encode(torch.randn(1, 3, 32, 32))
    with pytest.raises(InputError, match="vae.decode"):
        vae.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match="channel_mult"):
        VAEConfig(channel_mult=(1, 0))
    assert VAEConfig(channel_mult=[1, 2]).channel_mult == (1, 2)


def test_compute_scale_factor_gives_unit_variance():
    z = 3.0 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 1.0
    s = compute_scale_factor(z)
    assert s == pytest.approx(1 / 3, rel=0.05)
    assert (z * s).std().item() == pytest.approx(1.0, rel=1e-5)
    assert compute_scale_factor(list(z.split(16))) == pytest.approx(s, rel=1e-6)
    with pytest.raises(InputError):
        compute_scale_factor(torch.ones(2, 4, 2, 2))


def test_scale_factor_of_posterior_samples():
    """With the posterior std, the factor whitens mean + std * eps (what the LDM trains on), not the mean alone."""
    g = torch.Generator().manual_seed(1)
    mean = 2.0 * torch.randn(256, 4, 8, 8, generator=g)
    std = torch.rand(256, 4, 8, 8, generator=g) * 3.0  # E[std^2] = 3, so Var(sample) = 4 + 3
    s = compute_scale_factor(mean, std)
    draws = (mean + std * torch.randn(mean.shape, generator=g)) * s
    assert draws.std().item() == pytest.approx(1.0, rel=0.01)
    assert s == pytest.approx(compute_scale_factor(mean) * (mean.var().item() / 7.0) ** 0.5, rel=0.01)
    assert compute_scale_factor(torch.ones(2, 3), torch.full((2, 3), 0.5)) == pytest.approx(2.0)  # constant mean


def test_gan_losses_closed_form():
    ones = torch.ones(2, 1, 3, 3)
    assert hinge_d_loss(2 * ones, -2 * ones).item() == 0  # confident and correct: no loss
    assert hinge_d_loss(0 * ones, 0 * ones).item() == pytest.approx(1.0)
    assert generator_adv_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)
    assert not disc_active(10_000, VAEConfig(disc_start=-1))
    assert not disc_active(99, VAEConfig(disc_start=100)) and disc_active(100, VAEConfig(disc_start=100))


def test_discriminator_and_adaptive_weight():
    torch.manual_seed(0)
    vae, disc = _tiny(), PatchDiscriminator(in_channels=2, base_channels=8)
    x = torch.randn(2, 2, 32, 32)
    recon, post = vae(x)
    logits = disc(recon)
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    rec_loss, _ = vae_loss(x, recon, post, vae.cfg)
    w = adaptive_disc_weight(rec_loss, generator_adv_loss(logits), vae.last_layer(), vae.cfg)
    assert torch.isfinite(w) and w > 0 and not w.requires_grad
