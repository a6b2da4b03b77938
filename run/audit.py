"""Rerun only the audit of the synthetic training images of a finished run (evaluation/training_set.json, .md):

    python -m run.audit runs/tiny-stats

`train.py --force evaluation` would also redo the mirror samples' metrics and make every later stage stale (the
experiment reruns). The audit writes nothing any stage reads, so it can be redone alone, with the run's own
config.yaml and trained stages. The run's report.md takes the new section on the next `train.py` call on that run,
which reuses every finished stage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.errors import InputError, OneLineArgumentParser
from data.json_ready import read_json_object
from run.config import load_run_config
from run.downstream import evaluate_plan_samples
from run.lock import run_lock
from run.prepare_data import prepare_data
from run.state import RunState


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m run.audit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="Bad input exits 2 with one line 'error: ...'.")
    p.add_argument("run_dir", type=Path, help="a run folder whose plan stage is done (samples.json), e.g. runs/tiny")
    return p.parse_args(argv)


def run(run_dir: Path) -> Path:
    for name in ("config.yaml", "samples.json"):
        if not (run_dir / name).is_file():
            raise InputError(run_dir / name, "not found; expected a run folder whose plan stage has finished")
    cfg = load_run_config(run_dir / "config.yaml")
    with run_lock(run_dir):  # one writer per run folder, as for train.py
        data = prepare_data(cfg.data, run_dir, progress=False)  # cached: the run's own slices
        return evaluate_plan_samples(RunState(cfg, run_dir, data))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = run(args.run_dir)
    except InputError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a read-only run folder
        print(f"error: {err.filename or args.run_dir}: {err.strerror or err}; expected a writable run folder",
              file=sys.stderr)
        return 2
    result = read_json_object(path, "training-set audit")
    fid, ref = result.get("fid_equal_n"), result.get("fid_reference")
    if fid is not None:
        drawn = [side for side, yes in fid["with_replacement"].items() if yes] or ["none"]
        print(f"FID {fid['fake_vs_real']['mean']:.4g} vs real-vs-real bound {fid['real_vs_real_bound']['mean']:.4g} "
              f"(ratio {fid['ratio']:.3g}), n = {fid['n_per_side']} a side; real side: the {ref['name']}, "
              f"{ref['images']} images of {ref['subjects']} subjects; drawn with replacement: {', '.join(drawn)}")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
