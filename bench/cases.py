"""The timed workloads: one closure per implementation, same inputs, plus the FLOPs of one call.

diffusers models get our weights (bench.convert), so ours and diffusers compute the same numbers;
MONAI models keep their own initialisation (their ResBlock differs, see bench.build_refs.PARAM_NOTES).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import build_refs as refs
from bench.convert import controlnet_to_diffusers, unet_to_diffusers
from bench.timing import count_flops
from ddpm.sampling import sample
from ddpm.schedulers import make_schedule

GUIDANCE = 4.0
LR = 1e-4


@dataclass
class Case:
    """fns: implementation -> zero-argument callable timed as one unit; flops: FLOPs of one such call."""
    row: str
    batch: int
    fns: dict[str, Callable[[], object]]
    flops: dict[str, int] = field(default_factory=dict)


@dataclass
class Inputs:
    """x, noise: (B, 4, h, w) latents; t: (B,); context: (B, L, D); control: (B, C, H, W) at image size."""
    x: Tensor
    noise: Tensor
    t: Tensor
    context: Tensor
    uncond: Tensor
    control: Tensor


def make_inputs(setup: refs.BenchSetup, batch: int, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    lat = (batch, setup.unet.in_channels, setup.latent_size, setup.latent_size)
    ctx = (batch, setup.context_len, setup.unet.context_dim)
    ctrl = (batch, setup.control_channels, setup.image_size, setup.image_size)
    return Inputs(torch.randn(lat, generator=g), torch.randn(lat, generator=g),
                  torch.randint(0, 1000, (batch,), generator=g), torch.randn(ctx, generator=g),
                  torch.randn((1,) + ctx[1:], generator=g), (torch.rand(ctrl, generator=g) > 0.5).float())


def _unets(setup: refs.BenchSetup) -> dict[str, tuple[nn.Module, Callable]]:
    """implementation -> (model, denoiser(x, t, context, down=None, mid=None) -> eps)."""
    ours = refs.ours_unet(setup)
    diff = refs.diffusers_unet(setup)
    diff.load_state_dict(unet_to_diffusers(ours.state_dict(), setup.unet))
    monai = refs.monai_unet(setup)
    return {
        "ours": (ours, lambda x, t, c, down=None, mid=None: ours(x, t, c, down, mid)),
        "diffusers": (diff, lambda x, t, c, down=None, mid=None: diff(
            x, t, encoder_hidden_states=c, down_block_additional_residuals=down,
            mid_block_additional_residual=mid).sample),
        "monai": (monai, lambda x, t, c, down=None, mid=None: monai(
            x, timesteps=t, context=c, down_block_additional_residuals=down, mid_block_additional_residual=mid)),
    }


def _train_step(params: list[nn.Parameter], loss_fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """forward + backward + AdamW step (no clipping, no EMA: the same bare step on every side)."""
    opt = torch.optim.AdamW(params, lr=LR)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss

    return step


def _forward_backward(loss_fn: Callable[[], Tensor]) -> Callable[[], None]:
    return lambda: loss_fn().backward()


def unet_train(setup: refs.BenchSetup, batch: int) -> Case:
    inp = make_inputs(setup, batch)
    case = Case("unet_train", batch, {})
    for name, (model, fwd) in _unets(setup).items():
        model.train()

        def loss_fn(fwd=fwd) -> Tensor:
            return F.mse_loss(fwd(inp.x, inp.t, inp.context), inp.noise)

        case.fns[name] = _train_step(list(model.parameters()), loss_fn)
        case.flops[name] = count_flops(_forward_backward(loss_fn))
        model.zero_grad(set_to_none=True)
    return case


def _controlnets(setup: refs.BenchSetup, unet: nn.Module) -> dict[str, tuple[nn.Module, Callable]]:
    """implementation -> (controlnet, fn(x, t, context, control) -> (down residuals, mid residual))."""
    ours = refs.ours_controlnet(setup, unet)
    diff = refs.diffusers_controlnet(setup)
    diff.load_state_dict(controlnet_to_diffusers(ours.state_dict(), setup.unet))
    monai = refs.monai_controlnet(setup)
    return {
        "ours": (ours, lambda x, t, c, ctrl: ours(x, t, c, ctrl)),
        "diffusers": (diff, lambda x, t, c, ctrl: diff(x, t, encoder_hidden_states=c, controlnet_cond=ctrl,
                                                        return_dict=False)),
        "monai": (monai, lambda x, t, c, ctrl: monai(x, timesteps=t, controlnet_cond=ctrl, context=c)),
    }


def controlnet_train(setup: refs.BenchSetup, batch: int) -> Case:
    """Frozen UNet (eval, no grads) + trainable ControlNet, as the controlnet stage trains."""
    inp = make_inputs(setup, batch)
    case = Case("controlnet_train", batch, {})
    unets = _unets(setup)
    for name, (net, control_fn) in _controlnets(setup, unets["ours"][0]).items():
        unet, fwd = unets[name]
        unet.eval().requires_grad_(False)
        net.train()

        def loss_fn(fwd=fwd, control_fn=control_fn) -> Tensor:
            down, mid = control_fn(inp.x, inp.t, inp.context, inp.control)
            return F.mse_loss(fwd(inp.x, inp.t, inp.context, down, mid), inp.noise)

        case.fns[name] = _train_step(list(net.parameters()), loss_fn)
        case.flops[name] = count_flops(_forward_backward(loss_fn))
        net.zero_grad(set_to_none=True)
    return case


@torch.no_grad()
def reference_ddim_loop(fwd: Callable, scheduler, step: Callable, shape: tuple, context: Tensor, steps: int,
                        guidance: float = GUIDANCE, seed: int = 0) -> Tensor:
    """diffusers' pipeline loop: noise from seed, one call on cat([x, x]) with context = cat([uncond, cond])."""
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps_u, eps_c = fwd(torch.cat([latents, latents]), t.expand(2 * shape[0]), context).chunk(2)
        latents = step(scheduler, eps_u + guidance * (eps_c - eps_u), t, latents)
    return latents


def diffusers_step(scheduler, eps: Tensor, t: Tensor, x: Tensor) -> Tensor:
    return scheduler.step(eps, t, x).prev_sample


def monai_step(scheduler, eps: Tensor, t: Tensor, x: Tensor) -> Tensor:
    return scheduler.step(eps, int(t), x)[0]


def ddim_sample(setup: refs.BenchSetup, batch: int, steps: int = 50) -> Case:
    """DDIM, eta 0, CFG on: ours via ddpm.sampling.sample; references as diffusers' pipelines loop (cat [u, c])."""
    from diffusers import DDIMScheduler
    from monai.networks.schedulers import DDIMScheduler as MonaiDDIM
    inp = make_inputs(setup, batch)
    unets = _unets(setup)
    sched = make_schedule("scaled_linear", 1000)
    shape = tuple(inp.x.shape)
    # diffusers' pipelines: scheduler state + [uncond, cond] batch; leading spacing, no offset (see test file)
    diff_sched = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
                               steps_offset=0, timestep_spacing="leading")
    monai_sched = MonaiDDIM(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012,
                            clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    context = torch.cat([inp.uncond.expand_as(inp.context), inp.context])
    ours_fwd = unets["ours"][1]
    fns = {
        "ours": lambda: sample(ours_fwd, shape, inp.context, inp.uncond, sched, num_steps=steps, guidance=GUIDANCE,
                               generator=torch.Generator().manual_seed(0)),
        "diffusers": lambda: reference_ddim_loop(unets["diffusers"][1], diff_sched, diffusers_step, shape, context,
                                                 steps),
        "monai": lambda: reference_ddim_loop(unets["monai"][1], monai_sched, monai_step, shape, context, steps),
    }
    case = Case("ddim_sample", batch, fns)
    x2, t2 = torch.cat([inp.x, inp.x]), torch.cat([inp.t, inp.t])
    for name, (model, fwd) in unets.items():
        model.eval()
        with torch.no_grad():
            case.flops[name] = steps * count_flops(lambda: fwd(x2, t2, context))
    return case


def _vaes(setup: refs.BenchSetup) -> dict[str, tuple[Callable, Callable]]:
    """implementation -> (encode(x) -> posterior mean, decode(z) -> image)."""
    ours, diff, monai = refs.ours_vae(setup).eval(), refs.diffusers_vae(setup).eval(), refs.monai_vae(setup).eval()
    return {"ours": (lambda x: ours.encode(x).mean, ours.decode),
            "diffusers": (lambda x: diff.encode(x).latent_dist.mean, lambda z: diff.decode(z).sample),
            "monai": (lambda x: monai.encode(x)[0], monai.decode)}


def vae_cases(setup: refs.BenchSetup, batch: int) -> list[Case]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, setup.vae.in_channels, setup.image_size, setup.image_size), generator=g)
    z = torch.randn((batch, setup.vae.latent_channels, setup.latent_size, setup.latent_size), generator=g)
    enc, dec = Case("vae_encode", batch, {}), Case("vae_decode", batch, {})
    for name, (encode, decode) in _vaes(setup).items():
        enc.fns[name] = torch.no_grad()(lambda encode=encode: encode(x))
        dec.fns[name] = torch.no_grad()(lambda decode=decode: decode(z))
        enc.flops[name], dec.flops[name] = count_flops(enc.fns[name]), count_flops(dec.fns[name])
    return [enc, dec]
