"""Does bf16 autocast pay on this CPU (AVX512-BF16 / AMX)? fp32 vs bf16 training steps and sampling, interleaved.

    python -m bench.cpu_bf16 --config tiny --threads 1 --clock process --rounds 3 --out bench/cpu-bf16-tiny.json

Same stages, init and batches as bench/gpu_check.py. Each round times one fp32 and one bf16 call back to back
(order alternating); the speed-up is the median of the per-round ratios fp32 / bf16. On a shared, oversubscribed
machine wall time mostly measures the queue: `--clock process` (with `--threads 1`) counts the CPU time this
process used instead, which waiting for a core does not add to. Equal quality: the loss gap of the first steps from the same init, and the bf16 - fp32
difference of sampled images (same seeds).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.timing import cpu_stall_seconds
from bench.train_stages import PROMPTS, _masks, build_stages, parity_and_speed, precision_context, train_steps
from data.atomic import atomic_write_bytes
from run.pipeline import Pipeline, make_schedule_from
from run.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]


def cpu_timed(fn, clock: str) -> float:
    tick = time.process_time if clock == "process" else time.perf_counter
    tic = tick()
    fn()
    return tick() - tic


def interleaved(fns: dict, rounds: int, clock: str = "wall") -> dict:
    """{a, b: one call each} (e.g. fp32, bf16) -> medians over `rounds` rounds (one warm-up call each, order
    alternating), the per-round ratios a / b, and the fraction of the time other tasks waited for a CPU (Linux PSI)."""
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    stall, tic = cpu_stall_seconds(), time.perf_counter()
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            samples[name].append(cpu_timed(fns[name], clock))
    wall, after = time.perf_counter() - tic, cpu_stall_seconds()
    first, second = fns
    ratios = [a / b for a, b in zip(samples[first], samples[second])]
    return {f"{first}_s": statistics.median(samples[first]), f"{second}_s": statistics.median(samples[second]),
            "speedup_median_ratio": statistics.median(ratios), "ratios": ratios, "samples": samples,
            "clock": clock, "cpu_stall_fraction": None if stall is None or after is None else (after - stall) / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "process"), default="wall")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    cfg = load_run_config(str(ROOT / "configs" / f"{args.config}.yaml"))
    stages = build_stages(cfg, cpu)
    result = {"config": args.config, "threads": args.threads, "clock": args.clock, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "train": {}}
    for name, stage in stages.items():
        batch = getattr(cfg, f"{name}_train").batch_size
        parity = parity_and_speed(stage, cfg, batch, cpu, 0, 1)
        fns = {prec: train_steps(stage, cfg, batch, prec, 1000, cpu) for prec in ("fp32", "bf16")}
        result["train"][name] = {"batch": batch, "losses_fp32": parity["fp32"]["losses"],
                                 "losses_bf16": parity["bf16"]["losses"],
                                 "max_rel_loss_diff": parity["max_rel_loss_diff"], **interleaved(fns, args.rounds, args.clock)}
        print(name, {k: v for k, v in result["train"][name].items() if k not in ("samples", "ratios")}, flush=True)
    vae, control = stages["vae"].module.vae.eval(), stages["controlnet"]
    pipe = Pipeline(cfg, vae, 1.0, control.parent, make_schedule_from(cfg), control.module.eval())
    prompts = [PROMPTS[i % 2] for i in range(args.sample_batch)]
    masks = _masks(args.sample_batch, cfg.data.preprocess.size, 0).numpy()
    s = cfg.sample

    def generate(prec: str):
        with precision_context(prec, cpu):
            return pipe.generate(prompts, masks, seed=0, steps=s.steps, guidance=s.guidance, spacing=s.spacing)

    images = {prec: torch.from_numpy(generate(prec)) for prec in ("fp32", "bf16")}
    diff = (images["bf16"] - images["fp32"]).abs()
    result["sampling"] = {"batch": args.sample_batch, "steps": s.steps, "bf16_vs_fp32_max_abs": float(diff.max()),
                          "bf16_vs_fp32_mean_abs": float(diff.mean()),
                          **interleaved({prec: (lambda prec=prec: generate(prec)) for prec in images}, args.rounds,
                                        args.clock)}
    print("sampling", {k: v for k, v in result["sampling"].items() if k not in ("samples", "ratios")}, flush=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
