"""Ours vs diffusers vs MONAI: training steps, DDIM sampling and VAE, interleaved, median of --repeats.

python -m bench.run --config tiny --repeats 5 --out bench/results-tiny.json
Speed ratio = reference median / our median (> 1: ours is faster).  MFU = FLOPs / time / matmul ceiling.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

from bench import cases
from bench.build_refs import BenchSetup, load_setup, param_table, widths
from bench.timing import machine, matmul_gflops, median, time_interleaved
from data.atomic import atomic_write_bytes

DEFAULT_BATCHES = {"tiny": (1, 16), "paper": (1, 4)}
ROWS = ("vae", "unet_train", "controlnet_train", "ddim_sample")


def gemm_shapes(setup: BenchSetup, batch: int) -> dict[str, tuple[int, int, int]]:
    """The model's dominant GEMMs (m, k, n): 3x3 convs as im2col GEMMs and the GEGLU projection."""
    size, w = setup.latent_size, widths(setup.unet)
    deep = size >> (len(w) - 1)
    level1 = size >> 1
    return {f"conv3x3 level0 ({batch}x{size}^2, 9x{w[0]}, {w[0]})": (batch * size * size, 9 * w[0], w[0]),
            f"conv3x3 deepest ({batch}x{deep}^2, 9x{w[-1]}, {w[-1]})": (batch * deep * deep, 9 * w[-1], w[-1]),
            f"GEGLU level1 ({batch}x{level1}^2, {w[1]}, {8 * w[1]})": (batch * level1 ** 2, w[1], 8 * w[1])}


def ceiling(setup: BenchSetup, batch: int) -> dict[str, float]:
    return {name: round(matmul_gflops(*shape), 1) for name, shape in gemm_shapes(setup, batch).items()}


def build(row: str, setup: BenchSetup, batch: int, steps: int) -> list[cases.Case]:
    if row == "vae":
        return cases.vae_cases(setup, batch)
    if row == "ddim_sample":
        return [cases.ddim_sample(setup, batch, steps)]
    return [getattr(cases, row)(setup, batch)]


def summarise(case: cases.Case, samples: dict[str, list[float]], steps: int) -> dict:
    med = {name: median(s) for name, s in samples.items()}
    extra = {"per_image_50_steps_s": {n: m / case.batch * 50 / steps for n, m in med.items()},
             "ddim_steps": steps} if case.row == "ddim_sample" else {}
    return {"row": case.row, "batch": case.batch, **extra,
            "median_s": med, "per_image_s": {n: m / case.batch for n, m in med.items()},
            "samples_s": samples, "gflop": {n: f / 1e9 for n, f in case.flops.items()},
            "speed_ratio_vs_ours": {n: med[n] / med["ours"] for n in med if n != "ours"}}


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def markdown(result: dict) -> str:
    lines = ["| row | batch | ours s | diffusers s | MONAI s | ours/diffusers speed | ours/MONAI speed | ours MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        m, q = r["median_s"], r["speed_ratio_vs_ours"]
        lines.append(f"| {r['row']} | {r['batch']} | {m['ours']:.4g} | {m['diffusers']:.4g} | {m['monai']:.4g} | "
                     f"{q['diffusers']:.2f}x | {q['monai']:.2f}x | {100 * r['mfu']['ours']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=sorted(DEFAULT_BATCHES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default per config)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=50,
                        help="DDIM steps per sample (the JSON also scales to 50 steps: the cost per step is constant)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of fewer samples are too noisy on a shared machine)")
    rows = args.rows.split(",")
    if not set(rows) <= set(ROWS):
        parser.error(f"--rows must be a subset of {','.join(ROWS)}")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(DEFAULT_BATCHES[args.config])

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setup = load_setup(args.config)
    tic = time.time()
    result = {"command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": args.config, "machine_start": machine(), "setup": repr(setup),
              "ddim_steps": args.steps, "params": param_table(setup)}
    ceil_start = ceiling(setup, max(batches))
    result["rows"] = []
    for row in rows:
        for batch in batches:
            for case in build(row, setup, batch, args.steps):
                samples, stats = time_interleaved(case.fns, args.repeats)
                result["rows"].append({**summarise(case, samples, args.steps), **stats})
                print(f"{case.row} b{batch}: " + ", ".join(f"{n} {median(s):.4g}s" for n, s in samples.items()),
                      flush=True)
            del case
            gc.collect()
    ceil_end = ceiling(setup, max(batches))
    result["ceiling_gflops"] = {"start": ceil_start, "end": ceil_end,
                                "used": max(max(ceil_start.values()), max(ceil_end.values()))}
    for r in result["rows"]:  # against the best ceiling seen in the run: MFU errs low, never high
        r["mfu"] = {n: r["gflop"][n] / r["median_s"][n] / result["ceiling_gflops"]["used"] for n in r["median_s"]}
    result["machine_end"] = machine()
    result["wall_s"] = round(time.time() - tic, 1)
    atomic_write_json(args.out, result)
    print(markdown(result))
    print(f"ceiling GFLOP/s: {result['ceiling_gflops']}; load {result['machine_start']['load_average']} -> "
          f"{result['machine_end']['load_average']}; {result['wall_s']} s")


if __name__ == "__main__":
    main()
