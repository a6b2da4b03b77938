"""Resource limits, checked from what a file or config *claims* (headers, sizes) before anything is allocated.

A few bytes of input can claim gigabytes (a NIfTI header of 32767^3 voxels, a gzip bomb, a checkpoint config with
10^9 layers). Each limit is far above what this project's data and models need; over it, one InputError line.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from data.errors import InputError

MAX_VOXELS = 1 << 27  # one volume: 128 Mi voxels (512 MiB as float32); an ACDC frame is < 1 Mi
MAX_PIXELS = 1 << 26  # one 2-D image (a PNG mask): 8192 x 8192
MAX_ARRAY_BYTES = 1 << 32  # one array of a slice-set .npz (4 GiB); 1,000 slices of 2 x 128^2 float32 are 128 MiB
MAX_CONFIG_BYTES = 1 << 20  # a config file; the biggest shipped one is ~3 kB
MAX_SAMPLES = 10**6  # samples of one sample.py call (the requests are built up front); a method-sized plan is ~10^4

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


def stream_size(stream: BinaryIO, cap: int) -> int:
    """Bytes a (decompressing) stream yields, read in 1 MiB blocks and never past `cap`; nothing is kept.

    A truncated or corrupt stream counts what it gave before failing (the caller's reader then names the fault).
    """
    total = 0
    try:
        while total < cap and (block := stream.read(min(1 << 20, cap - total))):
            total += len(block)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error):
        pass
    return total


def check_npz(path: Path, limit: int = MAX_ARRAY_BYTES) -> None:
    """Each array of an .npz: the shape its .npy header claims is within `limit` bytes and the member really holds
    those bytes (counted while decompressing, up to the claim), so numpy never allocates for a mere claim."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                    where = f"{path} ({info.filename})"
                    claimed = math.prod(shape) * dtype.itemsize
                    if claimed > limit:
                        raise InputError(where, f"shape {shape} of {dtype} claims {claimed:,} bytes; the limit is "
                                                f"{limit:,} (refusing to allocate it)")
                    held = stream_size(member, claimed)
                    if held < claimed:
                        raise InputError(where, f"truncated: the header claims shape {shape} of {dtype} "
                                                f"({claimed:,} bytes) but the member holds {held:,}")
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(path, f"unreadable slice-set file ({err})") from None
