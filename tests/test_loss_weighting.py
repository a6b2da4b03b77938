"""Min-SNR-gamma loss weights (Hang et al. 2023) and the training loss that uses them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.errors import InputError
from ddpm.loss_weighting import min_snr_weight
from ddpm.schedulers import add_noise, make_schedule, prediction_target, rescale_zero_terminal_snr
from ddpm.trainer import StepDraws
from run.config import DiffusionConfig
from run.train_ldm import diffusion_loss

T = torch.arange(0, 1000, 37)


def independent_snr(kind: str) -> np.ndarray:
    """SNR = a / (1 - a) with a = prod(1 - beta) from the betas, in numpy."""
    a = np.cumprod(1.0 - make_schedule(kind, 1000).betas.numpy())
    return a / (1.0 - a)


@pytest.mark.parametrize("kind", ["scaled_linear", "cosine"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_closed_form(kind, gamma):
    snr = independent_snr(kind)[T.numpy()]
    sched = make_schedule(kind, 1000)
    assert np.allclose(min_snr_weight(sched, T, gamma, "epsilon").numpy(), np.minimum(snr, gamma) / snr, rtol=1e-12)
    assert np.allclose(min_snr_weight(sched, T, gamma, "v").numpy(), np.minimum(snr, gamma) / (snr + 1), rtol=1e-12)
    # the clip is active somewhere and not everywhere, so the two branches above are both checked
    assert (snr > gamma).any() and (snr < gamma).any()


def test_eps_weight_is_one_where_gamma_covers_every_snr():
    sched = make_schedule("scaled_linear", 1000)
    gamma = float(independent_snr("scaled_linear").max()) * 1.01
    assert torch.equal(min_snr_weight(sched, torch.arange(1000), gamma, "epsilon"), torch.ones(1000, dtype=torch.float64))


def test_v_weight_is_zero_at_zero_terminal_snr_and_finite():
    sched = rescale_zero_terminal_snr(make_schedule("scaled_linear", 1000))
    w = min_snr_weight(sched, torch.arange(1000), 5.0, "v")
    assert w[-1].item() == 0.0 and torch.isfinite(w).all() and (w[:-1] > 0).all()


def draws(seed: int = 0, batch: int = 6) -> StepDraws:
    return StepDraws(torch.Generator().manual_seed(seed), batch)


def toy_net(x_t, t, context):
    return 0.7 * x_t + 1e-3 * t.view(-1, 1, 1, 1).float() + context.mean()


def test_default_none_is_the_plain_mse_bit_for_bit():
    """The loss before this option existed: F.mse_loss on the eps target, same draws in the same order."""
    sched, x0, context = make_schedule("scaled_linear", 1000), torch.randn(6, 4, 8, 8), torch.randn(6, 3, 5)
    d = draws()
    t = d.randint(1000, (6,))
    noise = d.randn(x0.shape)
    before = F.mse_loss(toy_net(add_noise(sched, x0, noise, t), t, context).float(), noise.float())
    assert DiffusionConfig().loss_weighting == "none"
    assert torch.equal(diffusion_loss(toy_net, x0, context, sched, DiffusionConfig(), draws()), before)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_loss_is_the_weighted_per_sample_mse(prediction):
    sched, x0, context = make_schedule("scaled_linear", 1000), torch.randn(6, 4, 8, 8), torch.randn(6, 3, 5)
    cfg = DiffusionConfig(prediction=prediction, loss_weighting="min_snr", min_snr_gamma=2.0)
    d = draws()
    t = d.randint(1000, (6,))
    noise = d.randn(x0.shape)
    err = (toy_net(add_noise(sched, x0, noise, t), t, context) - prediction_target(sched, x0, noise, t, prediction))
    expected = (min_snr_weight(sched, t, 2.0, prediction).float() * err.pow(2).mean((1, 2, 3))).mean()
    got = diffusion_loss(toy_net, x0, context, sched, cfg, draws())
    assert torch.allclose(got, expected, rtol=1e-6)
    plain = diffusion_loss(toy_net, x0, context, sched, DiffusionConfig(prediction=prediction), draws())
    assert not torch.allclose(got, plain)


def test_bad_values_are_one_line_errors():
    for kwargs, field in (({"loss_weighting": "snr"}, "diffusion.loss_weighting"),
                          ({"min_snr_gamma": 0.0}, "diffusion.min_snr_gamma")):
        with pytest.raises(InputError, match=field) as err:
            DiffusionConfig(**kwargs)
        assert "\n" not in str(err.value)
