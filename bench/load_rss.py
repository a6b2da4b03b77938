"""Load test: sample 1,000 images in batch mode and evaluate them, watching the process's resident memory.

python -m bench.load_rss --n 1000 --batch-size 50 --steps 2 --work /tmp/load [--run runs/smoke] [--out bench/load-rss.json]

Without --run, a smoke-size run (configs/smoke.yaml, 32x32, a few training steps) is trained into --work first.
The plan (rebalancing planner, min_count mode capped at --n, masks reused with jitter) goes through the batch
sampler exactly as `sample.py --plan` does; RSS is read at the start, after every batch (a wrapper around the
pipeline's generate) and after the evaluation CLI. Flat memory = RSS growth per batch ~ 0 after the first batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

MIB = 2 ** 20
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
SMOKE_TRAINING = ["vae_train.steps=20", "ldm_train.steps=20", "controlnet_train.steps=10", "data.synthetic_n=24"]


def rss_bytes() -> int:
    """Resident set size now: psutil when installed, else VmRSS from /proc/self/status (Linux)."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read RSS: no psutil and no /proc/self/status")


def train_smoke_run(work: Path) -> Path:
    import train

    runs = work / "runs"
    if train.main(["--config", str(SMOKE), "--runs", str(runs), "--stage", "controlnet", *SMOKE_TRAINING]) != 0:
        raise SystemExit("training the smoke run failed")
    return runs / "smoke"


def plan_requests_for(run: Path, n: int, work: Path, seed: int = 0):
    """A rebalancing plan of n samples from the run's training split -> (requests, cfg, plan path)."""
    from run.samples import find_slice_set, plan_requests
    from data.plan_csv import load_plan, save_plan
    from data.planner import (
        PlanTarget,
        plan_rebalancing,
        planning_attributes,
    )
    from run.config import load_run_config

    cfg = load_run_config(str(run / "config.yaml"))
    train_ids = set(json.loads((run / "split.json").read_text())["train"])
    slices_path, slices = find_slice_set(run, cfg, train_ids)
    target = PlanTarget(keys=("health", "sex"), mode="min_count", min_count=n, max_total=n)
    plan = plan_rebalancing(planning_attributes(slices, train_ids), target, seed)
    plan_path = save_plan(plan, work / "plan.csv")
    requests = plan_requests(load_plan(plan_path), cfg, slices, slices_path, plan_path.parent)
    return requests, cfg, plan_path


def slope_per_batch(series: list[float]) -> float:
    """Least-squares slope of RSS (MiB) against the batch index."""
    if len(series) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(series)), np.asarray(series), 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load_rss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="trained run folder (default: train a smoke run into --work)")
    p.add_argument("--work", type=Path, required=True, help="scratch folder: samples, plan, evaluation outputs")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--steps", type=int, default=2, help="DDIM steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the series and summary as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ddpm.sampling import SampleSettings
    from run.samples import checkpoint_record, run_requests
    from run.pipeline import load_pipeline
    from evaluation.__main__ import main as evaluate

    marks = {"start": rss_bytes() / MIB}
    run = args.run or train_smoke_run(args.work)
    marks["after_training_or_loading_run"] = rss_bytes() / MIB
    requests, cfg, _ = plan_requests_for(run, args.n, args.work)
    paths = {k: run / f"{k}.safetensors" for k in ("vae", "ldm", "controlnet")}
    pipe = load_pipeline(paths["vae"], paths["ldm"], paths["controlnet"])
    marks["pipeline_loaded"] = rss_bytes() / MIB

    per_batch: list[float] = []
    generate = pipe.generate

    def generate_and_measure(*a, **k):
        images = generate(*a, **k)
        per_batch.append(rss_bytes() / MIB)  # after the batch is generated (its files are written next)
        return images

    pipe.generate = generate_and_measure
    settings = SampleSettings(steps=args.steps, guidance=cfg.sample.guidance, batch_size=args.batch_size)
    out = args.work / "samples"
    tic = time.perf_counter()
    done, skipped = run_requests(pipe, requests, out, settings, checkpoint_record(paths), progress=False)
    sample_seconds = time.perf_counter() - tic
    marks["after_sampling"] = rss_bytes() / MIB

    from run.samples import find_slice_set
    split = json.loads((run / "split.json").read_text())
    real_test = find_slice_set(run, cfg, set(split["test"]))[0]
    real_train = find_slice_set(run, cfg, set(split["train"]))[0]
    tic = time.perf_counter()
    code = evaluate(["--real", str(real_test), "--real-train", str(real_train), "--fake", str(out), "--quiet",
                     "--out", str(args.work / "eval" / "metrics.json"), "evaluation.fid_n=200", "evaluation.fid_repeats=2",
                     "evaluation.kid_subsets=10", "evaluation.kid_subset_size=50", "evaluation.segmenter_steps=20",
                     "evaluation.attribute_epochs=1"])
    evaluate_seconds = time.perf_counter() - tic
    marks["after_evaluation"] = rss_bytes() / MIB
    files = [p for p in out.iterdir() if not p.name.startswith(".")]
    half = len(per_batch) // 2
    summary = {
        "n_requested": args.n, "generated": len(done), "skipped": len(skipped), "batches": len(per_batch),
        "sidecars": len(list(out.glob("*.json"))), "files": len(files), "evaluation_exit_code": code,
        "sample_seconds": round(sample_seconds, 1), "evaluate_seconds": round(evaluate_seconds, 1),
        "rss_mib": {k: round(v, 1) for k, v in marks.items()},
        "batch_rss_mib": {"first": round(per_batch[0], 1), "last": round(per_batch[-1], 1),
                          "min": round(min(per_batch), 1), "max": round(max(per_batch), 1)},
        "growth_mib_per_batch_all": round(slope_per_batch(per_batch), 3),
        "growth_mib_per_batch_second_half": round(slope_per_batch(per_batch[half:]), 3),
        "peak_rss_mib": round(max([*marks.values(), *per_batch]), 1),
        "command": " ".join(["python -m bench.load_rss", *(argv if argv is not None else sys.argv[1:])]),
        "threads": args.threads, "pid": os.getpid(),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "batch_rss_series_mib": [round(v, 2) for v in per_batch]}, indent=1))
    return 0 if code == 0 and len(done) + len(skipped) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
