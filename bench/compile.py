"""Our training step four ways: eager or torch.compile'd UNet, torch's default (for-each) or fused AdamW.

`python -m bench.compile --config tiny --batch 16 --out bench/compile-tiny.json`. Interleaved medians like
bench.run; compilation happens before timing (in the warm-up) and its seconds are reported separately.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.build_refs import load_setup
from bench.cases import make_inputs
from bench.timing import machine, median, time_interleaved
from ddpm.trainer import TrainConfig, make_optimizer
from ddpm.unet import UNet


def train_step(unet: UNet, optimizer: torch.optim.Optimizer, inputs) -> callable:
    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(unet(inputs.x, inputs.t, inputs.context), inputs.noise)
        loss.backward()
        optimizer.step()
        return loss
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=("tiny", "paper"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    setup = load_setup(args.config)
    inputs = make_inputs(setup, args.batch)
    fns, compile_s = {}, {}
    for compiled in (False, True):
        for fused in (False, True):
            torch.manual_seed(0)
            unet = UNet(setup.unet).train()
            params = list(unet.parameters())
            optimizer = make_optimizer(params, TrainConfig(lr=1e-4)) if fused else torch.optim.AdamW(params, lr=1e-4)
            name = f"{'compiled' if compiled else 'eager'} + {'fused' if fused else 'default'} AdamW"
            if compiled:
                unet.compile()
                tic = time.perf_counter()
                train_step(unet, optimizer, inputs)()  # compiles forward and backward
                compile_s[name] = round(time.perf_counter() - tic, 1)
            fns[name] = train_step(unet, optimizer, inputs)
    samples, stats = time_interleaved(fns, args.repeats)
    base = median(samples["eager + default AdamW"])
    result = {"command": "python -m bench.compile " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "batch": args.batch, "first_call_s": compile_s,
              "median_s": {n: median(s) for n, s in samples.items()},
              "speed_vs_eager_default": {n: base / median(s) for n, s in samples.items()}, **stats}
    args.out.write_text(json.dumps(result, indent=1))
    for n in fns:
        print(f"| {n} | {result['median_s'][n] * 1e3:.1f} ms | {result['speed_vs_eager_default'][n]:.2f}x | "
              f"{sum(s <= 0.1 for s in stats['stall'][n])}/{len(stats['stall'][n])} |")
    print(f"first call (compilation) s: {compile_s}")


if __name__ == "__main__":
    main()
