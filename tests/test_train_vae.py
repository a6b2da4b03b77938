import numpy as np
import torch

from ddpm.vae import AutoencoderKL, VAEConfig
from run.train_vae import reconstruct, reconstruction_metrics


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAEConfig(in_channels=2, base_channels=8, channel_mult=(1, 2), latent_channels=4))


def test_reconstruct_is_batch_independent_clamped_and_shaped_like_its_input():
    vae = tiny_vae()
    x = np.random.default_rng(0).uniform(-1, 1, (5, 2, 16, 16)).astype(np.float32)
    whole, batched = reconstruct(vae, x), reconstruct(vae, x, batch_size=2)
    assert whole.shape == x.shape and whole.dtype == np.float32
    assert np.abs(whole).max() <= 1.0
    np.testing.assert_allclose(whole, batched, atol=1e-5)


def test_reconstruction_psnr_is_the_closed_form_on_reconstruct_output():
    vae = tiny_vae()
    x = np.random.default_rng(1).uniform(-1, 1, (4, 2, 16, 16)).astype(np.float32)
    recon = reconstruct(vae, x).astype(np.float64)
    expected = np.mean(10 * np.log10(4.0 / ((recon - x) ** 2).reshape(4, -1).mean(1)))
    metrics = reconstruction_metrics(vae, x, batch_size=3)
    assert metrics["n"] == 4 and abs(metrics["psnr_db"] - expected) < 1e-3
    assert 0.0 < metrics["ms_ssim"] <= 1.0
