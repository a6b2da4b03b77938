"""ddpm.unet: shapes, zero init, conditioning, the ControlNet residual hook, checkpointing, overfitting one batch."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from data.errors import InputError
from ddpm.attention import Attention
from ddpm.unet import UNet, UNetConfig


def _cfg(**kw) -> UNetConfig:
    base = dict(in_channels=4, out_channels=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_levels=(False, True), num_heads=2, context_dim=8)
    return UNetConfig(**{**base, **kw})


def _inputs(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size, size, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 5, 8, generator=g))


@pytest.fixture(scope="module")
def trained() -> UNet:
    """A tiny UNet after a few Adam steps, so the zero-initialised out conv and proj_outs are non-zero."""
    torch.manual_seed(0)
    model = UNet(_cfg())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t, context = _inputs()
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(model(x, t, context), torch.randn_like(x)).backward()
        opt.step()
    return model.eval()


def test_output_shape_and_zero_at_init():
    model = UNet(_cfg(channel_mult=(1, 2, 2), attention_levels=(False, True, True), out_channels=3))
    x, t, context = _inputs(size=16)
    out = model(x, t, context)
    assert out.shape == (2, 3, 16, 16)
    assert torch.equal(out, torch.zeros_like(out))


def test_output_depends_on_timestep_and_context(trained):
    x, t, context = _inputs()
    with torch.no_grad():
        out = trained(x, t, context)
        assert out.abs().max() > 0
        assert not torch.allclose(out, trained(x, t + 100, context), atol=1e-4)
        assert not torch.allclose(out, trained(x, t, torch.randn_like(context)), atol=1e-4)
        # the same sample in another batch slot gives the same prediction (no cross-batch mixing)
        torch.testing.assert_close(trained(x[:1], t[:1], context[:1]), out[:1], atol=1e-5, rtol=1e-5)
        # fractional and scalar timesteps are accepted
        assert trained(x, 3.5, context).shape == out.shape


def test_skip_list_matches_skip_channels(trained):
    x, t, context = _inputs()
    skips, h_mid, emb = trained.encode(x, t, context)
    assert [s.shape[1] for s in skips] == trained.skip_channels()
    assert len(skips) == len(trained.up_blocks) == 1 + len(trained.down_blocks)
    assert h_mid.shape == (2, 32, 4, 4) and emb.shape == (2, 64)
    torch.testing.assert_close(trained.decode(h_mid, skips, emb, context), trained(x, t, context))


def test_residual_hook(trained):
    x, t, context = _inputs()
    with torch.no_grad():
        skips, h_mid, _ = trained.encode(x, t, context)
        out = trained(x, t, context)
        zeros = [torch.zeros_like(s) for s in skips]
        assert torch.equal(trained(x, t, context, zeros, torch.zeros_like(h_mid)), out)
        for i in (0, len(skips) - 1):
            bumped = [z.clone() for z in zeros]
            bumped[i] = torch.randn_like(bumped[i])
            assert not torch.allclose(trained(x, t, context, down_residuals=bumped), out, atol=1e-4)
        assert not torch.allclose(trained(x, t, context, mid_residual=torch.randn_like(h_mid)), out, atol=1e-4)
        # ControlNet's hint enters after conv_in and flows through the whole encoder
        hint_skips, hint_mid, emb = trained.encode(x, t, context, hint=torch.ones_like(skips[0]))
        assert not torch.allclose(hint_skips[-1], skips[-1]) and not torch.allclose(hint_mid, h_mid)
    with pytest.raises(InputError, match="down_residuals"):
        trained(x, t, context, down_residuals=zeros[:-1])


def test_sliced_attention_and_channels_last_match(trained):
    x, t, context = _inputs()
    model = copy.deepcopy(trained)
    with torch.no_grad():
        expected = model(x, t, context)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x.to(memory_format=torch.channels_last), t, context), expected,
                                   atol=1e-5, rtol=1e-4)
        for layer in model.modules():
            if isinstance(layer, Attention):
                layer.backend, layer.chunk_size = "sliced", 5
        torch.testing.assert_close(model(x, t, context), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_the_same_gradients(trained, dropout):
    x, t, context = _inputs()
    grads = []
    for enabled in (False, True):
        model = copy.deepcopy(trained).train()
        model.cfg = UNetConfig(**{**model.cfg.__dict__, "gradient_checkpointing": enabled})
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
        calls, mid_forward = [], model.mid_block.forward
        model.mid_block.forward = lambda *a: calls.append(1) or mid_forward(*a)
        torch.manual_seed(1)
        (model(x, t, context) ** 2).mean().backward()
        assert len(calls) == (2 if enabled else 1)  # checkpointing re-runs the block in backward
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_bad_inputs_and_configs_raise_input_error(trained):
    x, t, context = _inputs()
    with pytest.raises(InputError, match="divisible by 2"):
        trained(torch.randn(2, 4, 7, 8), t, context)
    with pytest.raises(InputError, match="unet.context"):
        trained(x, t, torch.randn(2, 5, 3))
    with pytest.raises(InputError, match="unet.t"):
        trained(x, torch.zeros(3), context)
    with pytest.raises(InputError, match="attention_levels"):
        _cfg(attention_levels=(True,))
    with pytest.raises(InputError, match="num_heads"):
        _cfg(num_heads=3)
    with pytest.raises(InputError, match="backend"):
        _cfg(attention_backend="flash")


@pytest.mark.slow
def test_tiny_unet_overfits_one_batch():
    # fixed (x0, t, noise) at 16x16 latents: the eps-prediction loss on this one batch must fall 10x
    torch.manual_seed(0)
    model = UNet(_cfg(base_channels=16))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 16, 16, generator=g)
    noise = torch.randn(4, 4, 16, 16, generator=g)
    t = torch.tensor([50, 300, 600, 900])
    alpha_bar = torch.cos(t / 1000 * math.pi / 2).pow(2)[:, None, None, None]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    context = torch.randn(4, 5, 8, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):  # typically 10x by ~30 steps
        opt.zero_grad()
        loss = F.mse_loss(model(x_t, t, context), noise)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
