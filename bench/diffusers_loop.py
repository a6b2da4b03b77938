"""The reference side of bench.sampling_quality: diffusers' UNet2DConditionModel + ControlNetModel on our converted
weights, run inside the denoising loop of StableDiffusionControlNetPipeline with its schedulers (needs diffusers)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ddpm.schedulers import randn
from geometry.encodings import encode_control
from run.pipeline import Pipeline


def diffusers_denoiser(pipe: Pipeline) -> Callable:
    """fn(x, t, context, control, scale) -> eps with diffusers' UNet + ControlNet on our weights (checked equal)."""
    from bench.build_refs import BenchSetup, diffusers_controlnet, diffusers_unet
    from bench.convert import controlnet_to_diffusers, unet_to_diffusers

    cfg = pipe.cfg
    setup = BenchSetup("run", pipe.ldm.unet.cfg, cfg.controlnet, cfg.vae, cfg.data.preprocess.size, cfg.text.context_length)
    unet, net = diffusers_unet(setup), diffusers_controlnet(setup)
    unet.load_state_dict(unet_to_diffusers(pipe.ldm.unet.state_dict(), setup.unet))
    net.load_state_dict(controlnet_to_diffusers(pipe.controlnet.state_dict(), setup.unet))
    unet.eval().requires_grad_(False), net.eval().requires_grad_(False)

    def fn(x, t, context, control, scale):
        down, mid = net(x, t, encoder_hidden_states=context, controlnet_cond=control, conditioning_scale=scale,
                        return_dict=False)
        return unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample

    return fn


def diffusers_scheduler(cfg, kind: str):
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    d = cfg.diffusion
    pndm = PNDMScheduler(num_train_timesteps=d.num_train_steps, beta_start=d.beta_start, beta_end=d.beta_end,
                         beta_schedule=d.schedule, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                         prediction_type=d.prediction)
    # what users write: DPMSolverMultistepScheduler.from_config(pipe.scheduler.config) (its own defaults otherwise)
    return pndm if kind == "diffusers-pndm" else DPMSolverMultistepScheduler.from_config(pndm.config)


@torch.no_grad()
def diffusers_generate(pipe: Pipeline, fn: Callable, scheduler, prompts, masks, seeds, steps: int, guidance: float,
                       control_scale: float, keep: Optional[Callable[[int], bool]] = None) -> np.ndarray:
    """StableDiffusionControlNetPipeline.__call__'s denoising loop, our text encoder and VAE around it. keep(t):
    whether the ControlNet counts at timestep t; where not, its scale is 0 and it still runs (the pipeline's
    controlnet_keep from control_guidance_start / _end)."""
    cond, uncond = pipe.context(prompts), pipe.context([""]).expand(len(prompts), -1, -1)
    control = encode_control(torch.as_tensor(np.asarray(masks)).long(), pipe.controlnet.cfg.control)
    size, f = pipe.cfg.data.preprocess.size, pipe.vae.cfg.downsample_factor
    shape = (len(prompts), pipe.vae.cfg.latent_channels, size // f, size // f)
    latents = randn(shape, [torch.Generator().manual_seed(s) for s in seeds], torch.device("cpu"))
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    guided = guidance > 1.0  # the pipeline's do_classifier_free_guidance
    context = torch.cat([uncond, cond]) if guided else cond
    ctrl = torch.cat([control, control]) if guided else control
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        eps = fn(x, t, context, ctrl, control_scale if keep is None or keep(int(t)) else 0.0)
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents).prev_sample
    return pipe.vae.decode(latents / pipe.scale_factor).clamp(-1, 1).float().numpy()


def check_diffusers_equal(pipe: Pipeline, fn: Callable, masks) -> float:
    """max |ours - diffusers| of one ControlNet-conditioned eps on the run's weights (must be float noise)."""
    from controlnet.model import controlled_model_fn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.vae.cfg.latent_channels, *(2 * [pipe.cfg.data.preprocess.size // pipe.vae.cfg.downsample_factor]),
                    generator=g)
    t, c = torch.tensor([900, 50]), pipe.context(["", "healthy"])
    control = encode_control(torch.as_tensor(np.asarray(masks[:2])).long(), pipe.controlnet.cfg.control)
    ours = controlled_model_fn(pipe.ldm.unet, pipe.controlnet, control, 2.0)(x, t, c)
    return float((ours - fn(x, t, c, control, 2.0)).abs().max())
