"""FID Inception feature throughput: images/s, FLOPs and MFU; NCHW input vs channels_last input.

`python -m bench.inception --batch 50 --out bench/inception.json`. No reference implementation can run here
(pytorch-fid and torch-fidelity need torchvision), so this reports our absolute rate against the matmul ceiling.
Since FIDInception converts its input with ddpm.blocks.cpu_channels_last, both columns now run the same path;
bench/inception-before.json is the run that found the gain, made before that line was added.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.timing import count_flops, machine, matmul_gflops, median, time_interleaved
from evaluation.inception import FIDInception


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="input image size (resized to 299 inside)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = FIDInception().eval()
    x = torch.rand(args.batch, 2, args.size, args.size)
    channels_last = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(inp: torch.Tensor) -> torch.Tensor:
        return model(inp)

    fns = {"NCHW": lambda: run(x), "channels_last input": lambda: run(channels_last)}
    flops = count_flops(fns["NCHW"])
    ceiling = max(matmul_gflops(args.batch * 35 * 35, 288, 64), matmul_gflops(args.batch * 17 * 17, 768, 192))
    samples, stats = time_interleaved(fns, args.repeats)
    result = {"command": "python -m bench.inception " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "batch": args.batch, "gflop_per_batch": flops / 1e9, "ceiling_gflops": ceiling,
              "median_s": {n: median(s) for n, s in samples.items()},
              "max_abs_diff": (run(x) - run(channels_last)).abs().max().item(), **stats}
    args.out.write_text(json.dumps(result, indent=1))
    for name, seconds in result["median_s"].items():
        print(f"| {name} | {seconds * 1e3:.0f} ms | {args.batch / seconds:.1f} images/s | "
              f"{flops / seconds / 1e9 / ceiling:.0%} MFU | {sum(s <= 0.1 for s in stats['stall'][name])}/"
              f"{len(stats['stall'][name])} clean |")
    print(f"GFLOP/batch {flops / 1e9:.1f}, ceiling {ceiling:.0f} GFLOP/s, max |diff| {result['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
