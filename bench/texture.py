"""Intensity and fine texture of a run's generated held-out images beside the real ones (the check behind
BENCHMARKS.md's "less fine texture" reading of the v-prediction main job).

    python -m bench.texture --run runs/tiny --n 32 [sample.guidance=2 ...]

Samples the first n held-out slices (their prompts + masks, seeds 0..n-1, the run's sampler settings with any
section.key=value overrides) in fp32 and in the run's sample.precision, and prints per set the mean and standard
deviation of the pixels and the mean absolute difference of horizontally adjacent pixels (high for speckle and fine
texture, low for smooth images).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.run_data import run_data
from data.errors import InputError, OneLineArgumentParser
from ddpm.trainer import autocast_context
from run.config import load_run_config
from run.pipeline import generation_kwargs, load_pipeline


def fine_texture(images: np.ndarray) -> np.ndarray:
    """images (N, C, H, W) -> (N,) mean |x[..., j + 1] - x[..., j]| per image."""
    return np.abs(np.diff(images, axis=-1)).mean(axis=(1, 2, 3))


def texture_stats(images: np.ndarray) -> dict:
    """images (N, C, H, W) -> mean, std and mean |x[..., j + 1] - x[..., j]| over all pixels."""
    return {"mean": float(images.mean()), "std": float(images.std()), "mean_abs_dx": float(fine_texture(images).mean())}


def main(argv: list[str] | None = None) -> int:
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished run (read only)")
    p.add_argument("--n", type=int, default=32, help="held-out slices")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="section.key=value on the run's config, e.g. sample.guidance=2")
    args = p.parse_args(argv)
    try:
        torch.set_num_threads(args.threads)
        cfg = load_run_config(args.run / "config.yaml", args.overrides)
        with tempfile.TemporaryDirectory() as scratch:
            test = run_data(args.run, cfg, Path(scratch)).test
        pipe = load_pipeline(args.run / "vae.safetensors", args.run / "ldm.safetensors", args.run / "controlnet.safetensors")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    s, n = cfg.sample, min(args.n, len(test))
    out = {"run": str(args.run), "overrides": args.overrides, "n": n, "real": texture_stats(test.images[:n])}
    def sample(precision: str) -> np.ndarray:
        with autocast_context(precision, pipe.device):
            return pipe.generate(test.prompts[:n], test.masks[:n], seed=0, **generation_kwargs(s))

    fp32 = sample("fp32")
    out["generated_fp32"] = texture_stats(fp32)
    if s.precision != "fp32":
        low = sample(s.precision)
        out[f"generated_{s.precision}"] = texture_stats(low)
        out[f"mean_abs_fp32_minus_{s.precision}"] = float(np.abs(fp32 - low).mean())
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
