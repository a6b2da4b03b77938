import pytest
import torch

from controlnet.model import ControlNet, ControlNetConfig, controlled_model_fn
from data.errors import InputError
from ddpm.unet import UNet, UNetConfig
from geometry.encodings import CONTROL_TYPES, encode_control

FACTOR = 4


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    unet = UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(False, True), num_heads=2, context_dim=8))
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)  # a "trained" UNet: non-zero output
    return unet.eval()


def _inputs(kind: str = "onehot", batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    context = torch.randn(batch, 5, 8, generator=gen)
    masks = torch.randint(0, 4, (batch, 2, 8 * FACTOR, 8 * FACTOR), generator=gen)
    return x, t, context, encode_control(masks, kind)


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("kind", CONTROL_TYPES)
def test_init_equals_base_unet_for_every_control_type(kind):
    unet = _tiny_unet()
    net = ControlNet(unet, ControlNetConfig(control=kind), FACTOR)
    x, t, context, control = _inputs(kind)
    with torch.no_grad():
        base = unet(x, t, context)
        controlled = controlled_model_fn(unet, net, control)(x, t, context)
    assert torch.equal(base, controlled)


def test_trained_controlnet_changes_output_but_scale_zero_is_base():
    unet = _tiny_unet()
    net = ControlNet(unet, ControlNetConfig(), FACTOR)
    _perturb(net)
    x, t, context, control = _inputs()
    with torch.no_grad():
        base = unet(x, t, context)
        assert not torch.allclose(controlled_model_fn(unet, net, control, 1.0)(x, t, context), base)
        down, mid = net(x, t, context, control, scale=0.0)
        assert torch.equal(unet(x, t, context, down_residuals=down, mid_residual=mid), base)


def test_gradients_reach_only_controlnet():
    unet = _tiny_unet()
    unet.requires_grad_(False)
    net = ControlNet(unet, ControlNetConfig(), FACTOR)
    _perturb(net)
    x, t, context, control = _inputs()
    controlled_model_fn(unet, net, control)(x, t, context).pow(2).mean().backward()
    assert all(p.grad is None for p in unet.parameters())
    assert all(p.grad is not None for p in net.parameters())
    assert not any(p is q for p in net.parameters() for q in unet.parameters()), "ControlNet owns a copy"


def test_control_is_repeated_under_fused_guidance():
    unet = _tiny_unet()
    net = ControlNet(unet, ControlNetConfig(), FACTOR)
    _perturb(net)
    x, t, context, control = _inputs()
    fn = controlled_model_fn(unet, net, control)
    with torch.no_grad():
        doubled = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, context]))
        assert torch.allclose(doubled[:2], fn(x, t, context), atol=1e-5)


def test_hint_encoder_runs_once_per_batch_size_and_changes_nothing():
    unet = _tiny_unet()
    net = ControlNet(unet, ControlNetConfig(), FACTOR)
    _perturb(net)
    x, t, context, control = _inputs()
    calls = []
    net.hint.register_forward_hook(lambda *_: calls.append(1))
    fn = controlled_model_fn(unet, net, control)
    with torch.no_grad():
        steps = [fn(x, t + k, context) for k in (0, 7, 30)]  # a sampler's steps: new t, same masks
        fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, context]))  # guidance on: the doubled batch
        fresh = [unet(x, t + k, context, *net(x, t + k, context, control)) for k in (0, 7, 30)]
    assert len(calls) == 2 + 3  # one per batch size in fn; the three uncached forwards run it each time
    for a, b in zip(steps, fresh):
        assert torch.equal(a, b)


def test_bad_control_shape_and_type():
    unet = _tiny_unet()
    net = ControlNet(unet, ControlNetConfig(), FACTOR)
    x, t, context, control = _inputs()
    with pytest.raises(InputError, match="expected control of shape"):
        net(x, t, context, control[:, :3])
    with pytest.raises(InputError, match="expected control of shape"):  # before the hint encoder sees it
        controlled_model_fn(unet, net, control[:, :3])(x, t, context)
    with pytest.raises(InputError, match="unknown control type"):
        ControlNetConfig(control="edges")


def test_control_interval_runs_the_controlnet_only_at_sigmas_inside_it():
    import math

    from ddpm.sampling import SampleSettings, in_sigma_interval, sample
    from ddpm.schedulers import ddim_timesteps, make_schedule

    unet = _tiny_unet()
    net = ControlNet(unet, ControlNetConfig(), FACTOR)
    _perturb(net)
    x, _, context, control = _inputs()
    sched = make_schedule("scaled_linear", 1000)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))

    def draw(interval):
        fn = controlled_model_fn(unet, net, control, 2.0, sched, interval)
        return sample(fn, x.shape, context, None, sched, sampler="dpmpp2m", num_steps=10, spacing="trailing",
                      generator=torch.Generator().manual_seed(3))

    timesteps = ddim_timesteps(1000, 10, "trailing").tolist()
    sigma = [((1 - float(sched.alphas_cumprod[t])) / float(sched.alphas_cumprod[t])) ** 0.5 for t in timesteps]
    assert sigma == sorted(sigma, reverse=True) and sigma[-1] < 1.0 < sigma[0]
    full, everywhere = draw(None), draw((0.0, math.inf))
    assert torch.equal(full, everywhere) and len(calls) == 20  # [0, inf]: every step, bit-identical
    calls.clear()
    partial = draw((1.0, math.inf))
    inside = sum(in_sigma_interval(sched, t, (1.0, math.inf)) for t in timesteps)
    assert 0 < inside < 10 and len(calls) == inside  # the ControlNet is not run at all outside
    assert not torch.equal(partial, full)
    calls.clear()
    unet_only = sample(lambda a, b, c: unet(a, b, c), x.shape, context, None, sched, sampler="dpmpp2m", num_steps=10,
                       spacing="trailing", generator=torch.Generator().manual_seed(3))
    assert torch.equal(draw((100.0, math.inf)), unet_only) and not calls  # nothing inside: the UNet alone

    with pytest.raises(InputError, match="control_interval"):
        controlled_model_fn(unet, net, control, 1.0, None, (1.0, 2.0))
    with pytest.raises(InputError, match="sample.control_interval"):
        SampleSettings(control_interval=(2.0, 1.0))
