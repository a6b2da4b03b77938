"""Step counts that fit a wall-clock budget, from a short calibration run's metrics logs.

A lent GPU comes with minutes, not hours, and its speed on these small networks is set by kernel launches,
not by arithmetic, so it cannot be predicted from the CPU numbers. `bench/acdc_long_gpu.sh` first trains each
stage for a few steps, then this module reads the `sec` column of each stage's `*-train-metrics.jsonl` and
turns a budget into `STAGE_train.steps=N` overrides. The rate is taken between the first and the last log record
so start-up (data, cuDNN autotuning, first-call compilation) does not count; the stages' learning rates are
constant after warm-up, so any step count is a valid run of the preset.

    python -m bench.budget_steps CALIBRATION_RUN_DIR BUDGET_S [--cap CONFIG.yaml]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

# Shares of the training budget: the ControlNet carries control fidelity, the LDM realism, the VAE only needs
# to reconstruct (measured on CPU: VAE 787 s, LDM 828 s, ControlNet 1324 s for the acdc preset).
SHARES = {"vae": 0.15, "ldm": 0.40, "controlnet": 0.45}
ROUND_TO = 100


def seconds_per_step(metrics: Path) -> float:
    """Seconds per optimiser step between the first and the last record of one stage's metrics log."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if len(records) < 2:
        raise ValueError(f"{metrics}: need at least two log records to time steps, found {len(records)}")
    first, last = records[0], records[-1]
    if last["step"] <= first["step"]:
        raise ValueError(f"{metrics}: steps do not increase ({first['step']} -> {last['step']})")
    return (last["sec"] - first["sec"]) / (last["step"] - first["step"])


def steps_for_budget(rates: dict[str, float], budget_s: float, caps: dict[str, int] | None = None) -> dict[str, int]:
    """Each stage's step count: its share of `budget_s` over its rate, rounded down to ROUND_TO (at least ROUND_TO)."""
    steps = {}
    for stage, share in SHARES.items():
        n = int(share * budget_s / rates[stage]) // ROUND_TO * ROUND_TO
        steps[stage] = max(ROUND_TO, min(n, (caps or {}).get(stage, n)))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print STAGE_train.steps=N overrides that fit a wall budget.")
    parser.add_argument("run", type=Path, help="a calibration run folder (holds vae/, ldm/, controlnet/)")
    parser.add_argument("budget_s", type=float, help="seconds of training for the three stages together")
    parser.add_argument("--cap", type=Path, default=None, help="config whose *_train.steps are upper bounds")
    args = parser.parse_args(argv)
    try:
        rates = {stage: seconds_per_step(args.run / stage / f"{stage}-train-metrics.jsonl") for stage in SHARES}
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    caps = None
    if args.cap is not None:
        cfg = yaml.safe_load(args.cap.read_text())
        caps = {stage: cfg[f"{stage}_train"]["steps"] for stage in SHARES}
    steps = steps_for_budget(rates, args.budget_s, caps)
    print(" ".join(f"{stage}_train.steps={n}" for stage, n in steps.items()))
    print("seconds per step: " + ", ".join(f"{s} {r:.4f}" for s, r in rates.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
