"""ControlNet: a trainable copy of the UNet encoder + middle block, steered by a geometry hint.

Every path from the copy back into the frozen UNet goes through a zero-initialised convolution, so at
initialisation UNet + ControlNet computes exactly what the UNet alone does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor, nn

from data.errors import InputError
from data.limits import MAX_CHANNELS, MAX_LEVELS
from ddpm.blocks import zero_module
from data.fields import bounded, check_fields
from ddpm.sampling import check_interval, in_sigma_interval
from ddpm.schedulers import NoiseSchedule
from ddpm.unet import UNet
from geometry.encodings import CONTROL_TYPES, control_channels


@dataclass
class ControlNetConfig:
    control: str = "onehot"  # geometry encoding of the ED/ES masks, see geometry.encodings
    hint_channels: tuple[int, ...] = bounded((16, 32), lo=1, hi=MAX_CHANNELS, max_items=MAX_LEVELS)
    frames: int = bounded(2, lo=1, hi=16)  # ED and ES masks

    def __post_init__(self) -> None:
        check_fields(self, "controlnet")
        if self.control not in CONTROL_TYPES:
            raise InputError("controlnet.control", f"unknown control type {self.control!r}; expected one of {', '.join(CONTROL_TYPES)}")
        if not self.hint_channels or any(c < 1 for c in self.hint_channels):
            raise InputError("controlnet.hint_channels", f"expected positive ints, got {self.hint_channels!r}")


class HintEncoder(nn.Module):
    """Control image (B, C, H, W) at image resolution -> (B, out, H/f, W/f) at latent resolution; last conv zero."""

    def __init__(self, in_channels: int, hidden: tuple[int, ...], out_channels: int, factor: int) -> None:
        super().__init__()
        downsamples = int(math.log2(factor))
        if 2 ** downsamples != factor:
            raise InputError("controlnet", f"latent downsampling factor must be a power of 2, got {factor}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden[0], 3, padding=1), nn.SiLU()]
        ch = hidden[0]
        for i in range(downsamples):
            nxt = hidden[min(i + 1, len(hidden) - 1)]
            layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, nxt, 3, padding=1, stride=2), nn.SiLU()]
            ch = nxt
        layers.append(zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))
        self.net = nn.Sequential(*layers)
        self.factor = factor

    def forward(self, control: Tensor) -> Tensor:
        return self.net(control)


class ControlNet(nn.Module):
    """forward(x, t, context, control) -> (down_residuals, mid_residual) to add into the frozen UNet."""

    def __init__(self, unet: UNet, cfg: ControlNetConfig, image_factor: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.copy = UNet(unet.cfg)
        self.copy.load_state_dict(unet.state_dict())
        del self.copy.up_blocks, self.copy.out  # the copy only runs encode()
        base = unet.cfg.base_channels
        self.hint = HintEncoder(control_channels(cfg.control, cfg.frames), cfg.hint_channels, base, image_factor)
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in unet.skip_channels())
        mid = unet.skip_channels()[-1]
        self.mid_zero_conv = zero_module(nn.Conv2d(mid, mid, 1))

    def check_control(self, x: Tensor, control: Tensor) -> None:
        expected = (x.shape[0], control_channels(self.cfg.control, self.cfg.frames),
                    x.shape[2] * self.hint.factor, x.shape[3] * self.hint.factor)
        if tuple(control.shape) != expected:
            raise InputError("control", f"expected control of shape {expected}, got {tuple(control.shape)}")

    def forward(self, x: Tensor, t: Tensor, context: Tensor, control: Tensor, scale: float = 1.0,
                hint: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """x: (B, 4, h, w) latents; control: (B, C, h*f, w*f) encoded masks; hint: self.hint(control) (B, base, h, w)
        when the caller already has it (it depends on the masks only, not on x or t)."""
        self.check_control(x, control)
        skips, h_mid, _ = self.copy.encode(x, t, context, hint=self.hint(control) if hint is None else hint)
        down = [conv(s) * scale for conv, s in zip(self.zero_convs, skips)]
        return down, self.mid_zero_conv(h_mid) * scale


def controlled_model_fn(unet: UNet, controlnet: ControlNet | None, control: Tensor | None, scale: float = 1.0,
                        sched: NoiseSchedule | None = None, interval: Sequence[float] | None = None):
    """model_fn(x, t, context) for ddpm.sampling; repeats the control when CFG doubles the batch. The hint encoder runs
    once per batch size, not once per call: its output depends on the masks only, so a sampler's steps share it.
    interval: [lo, hi] in sigma (SampleSettings.control_interval, needs sched); at a step outside it the ControlNet
    is not run at all and the UNet denoises alone (a sampler calls with one timestep for the whole batch)."""
    check_interval(interval, "control_interval")
    if interval is not None and sched is None:
        raise InputError("control_interval", "a control interval needs the noise schedule (sched), got None")
    hints: dict[int, Tensor] = {}

    def model_fn(x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        if controlnet is None or control is None or scale == 0.0:
            return unet(x, t, context)
        if interval is not None and not in_sigma_interval(sched, int(t[0]), interval):
            return unet(x, t, context)
        ctrl = control.repeat(x.shape[0] // control.shape[0], 1, 1, 1) if x.shape[0] != control.shape[0] else control
        if x.shape[0] not in hints:
            controlnet.check_control(x, ctrl)
            hints[x.shape[0]] = controlnet.hint(ctrl)
        down, mid = controlnet(x, t, context, ctrl, scale, hint=hints[x.shape[0]])
        return unet(x, t, context, down_residuals=down, mid_residual=mid)

    return model_fn
