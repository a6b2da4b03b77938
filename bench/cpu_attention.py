"""Training steps with torch's fused SDPA ("fused") against the project's default ("sdpa": the math path where a
half-precision CPU backward will run at short lengths, ddpm/attention.py), interleaved, from the same init.

    python -m bench.cpu_attention --config tiny --threads 1 --clock process --rounds 15 \
        --out bench/cpu-attention-tiny.json

Each stage (VAE, LDM, ControlNet; the stage's batch size and precision in the preset) is built twice from seed 0
(bench/train_stages.py), once per backend (set on every attention module, the text encoder's included); each round
times one step of each, order alternating, and the speed-up is the median of the per-round ratios fused / sdpa
(bench/cpu_bf16.py's `interleaved`; `--clock process` counts this process's CPU time, which a shared machine's queue
does not add to). Equal training: the losses of the first steps from the same init, and how far apart the two runs'
weights are after them, relative to how far they moved, beside the same gap between fp32 and bf16 training (torch's
kernel both times); and the share of a fused step's CPU time in torch's attention backward. Then one attention
call's forward + backward, fused kernel against the math path, at the tiny preset's lengths and longer, fp32 and
bf16: where the default's threshold (ddpm.attention.SHORT_SCORES) comes from.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from bench.cpu_bf16 import interleaved
from bench.train_stages import build_stages, train_steps
from data.atomic import atomic_write_bytes
from ddpm.attention import attention
from run.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("fused", "sdpa")
PARITY_STEPS = 5
LENGTHS = ((16, 16), (64, 64), (64, 16), (256, 256), (1024, 16), (1024, 1024))  # (Lq, Lk): tiny's, then longer


def one_call(lq: int, lk: int, dtype: torch.dtype, rounds: int, clock: str) -> dict:
    """Forward + backward of one attention call (batch 8, 4 heads of 32), the fused kernel against the math path."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, n, 32, generator=g).to(dtype).requires_grad_(True) for n in (lq, lk, lk))
    grad = torch.randn(8, 4, lq, 32, generator=g).to(dtype)
    fns = {b: (lambda b=b: attention(q, k, v, b, chunk_size=lq).backward(grad)) for b in ("fused", "sliced")}
    return {"lq": lq, "lk": lk, "dtype": str(dtype).removeprefix("torch."), **interleaved(fns, rounds, clock)}


def attention_backward_share(step) -> float:
    """Share of one step's CPU time (torch.profiler, self time) spent in torch's fused attention backward kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    fused = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key and "backward" in e.key)
    return fused / sum(e.self_cpu_time_total for e in events)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "process"), default="process")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="section.key=value on the config, e.g. ldm_train.precision=fp32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    cfg = load_run_config(str(ROOT / "configs" / f"{args.config}.yaml"), args.overrides)
    stages = {b: build_stages(cfg, cpu) for b in BACKENDS}
    for b in BACKENDS:
        for stage in stages[b].values():
            stage.use_attention(b)
    result = {"config": args.config, "threads": args.threads, "clock": args.clock, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "train": {}}
    for name in ("vae", "ldm", "controlnet"):
        train = getattr(cfg, f"{name}_train")
        runs = {b: (b, train.precision) for b in BACKENDS} | {"fused_fp32": ("fused", "fp32")}
        parity, weights = {}, {}
        for run, (b, precision) in runs.items():
            step = train_steps(stages[b][name], cfg, train.batch_size, precision, PARITY_STEPS, cpu)
            parity[run] = [float(step()) for _ in range(PARITY_STEPS)]
            weights[run] = {k: v.clone() for k, v in stages[b][name].module.state_dict().items()}
            stages[b][name].reset()
        init = stages["sdpa"][name].init
        keys = [k for k in init if init[k].is_floating_point()]

        def apart(a: str, b: str) -> float:
            """How far apart two runs' weights went, relative to how far the first run's moved from the init."""
            gap = sum(float((weights[a][k] - weights[b][k]).square().sum()) for k in keys)
            return (gap / sum(float((weights[a][k] - init[k]).square().sum()) for k in keys)) ** 0.5

        fns = {b: train_steps(stages[b][name], cfg, train.batch_size, train.precision, 1000, cpu) for b in BACKENDS}
        fns["fused"]()  # a warm step first: the profile shows where a step's time went before the change
        share = attention_backward_share(fns["fused"])
        result["train"][name] = {"batch": train.batch_size, "precision": train.precision,
                                 **{f"losses_{run}": parity[run] for run in runs},
                                 "max_rel_loss_diff": max(abs(a - c) / abs(a) for a, c in zip(parity["fused"],
                                                                                               parity["sdpa"])),
                                 # the backends' gap beside the gap bf16 itself opens (fused: bf16 vs fp32)
                                 "update_rel_diff": apart("fused", "sdpa"),
                                 "update_rel_diff_bf16_vs_fp32": apart("fused_fp32", "fused"),
                                 "fused_attention_backward_share": share,
                                 **interleaved(fns, args.rounds, args.clock)}
        print(name, {k: v for k, v in result["train"][name].items() if k not in ("samples", "ratios")}, flush=True)
    result["one_call"] = [one_call(lq, lk, dtype, args.rounds, args.clock) for dtype in (torch.float32, torch.bfloat16)
                          for lq, lk in LENGTHS]
    for r in result["one_call"]:
        print("attention", r["dtype"], (r["lq"], r["lk"]), f"fused / math {r['speedup_median_ratio']:.2f}", flush=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
