"""Resource limits, checked from what a file or config *claims* (headers, sizes) before anything is allocated.

A few bytes of input can claim gigabytes (a NIfTI header of 32767^3 voxels, a gzip bomb, a checkpoint config with
10^9 layers). Each limit is far above what this project's data and models need; over it, one InputError line.
"""
from __future__ import annotations

import math

from data.errors import InputError

MAX_VOXELS = 1 << 27  # one volume: 128 Mi voxels (512 MiB as float32); an ACDC frame is < 1 Mi
MAX_PIXELS = 1 << 26  # one 2-D image (a PNG mask): 8192 x 8192
MAX_ARRAY_BYTES = 1 << 32  # one array of a slice-set .npz (4 GiB)
MAX_CONFIG_BYTES = 1 << 20  # a config file; the biggest shipped one is ~3 kB

# Model sizes (a checkpoint's embedded config builds the model before any weight is read).
MAX_CHANNELS = 1024  # base channels of a VAE/UNet, width of the text encoder
MAX_WIDTH = 4096  # channels at the widest level (base x channel multiplier)
MAX_LEVELS = 8  # resolution levels (channel_mult items)
MAX_BLOCKS = 8  # residual blocks per level
MAX_LAYERS = 64  # transformer layers


def check_shape(where: str, shape: tuple[int, ...], limit: int = MAX_VOXELS, what: str = "voxels") -> None:
    """Refuse an array shape whose element count (computed exactly, never allocated) is over `limit`."""
    claimed = math.prod(int(n) for n in shape)
    if claimed > limit:
        raise InputError(where, f"shape {tuple(int(n) for n in shape)} claims {claimed:,} {what}; the limit is "
                                f"{limit:,} (refusing to allocate it)")


def check_width(section: str, base: int, mult: tuple[int, ...]) -> None:
    """The widest level of a VAE/UNet: base x max(channel_mult) channels."""
    if isinstance(base, int) and mult and all(isinstance(m, int) for m in mult) and base * max(mult) > MAX_WIDTH:
        raise InputError(f"{section}.channel_mult", f"{base} x {max(mult)} = {base * max(mult)} channels at the "
                                                    f"widest level; expected at most {MAX_WIDTH}")
