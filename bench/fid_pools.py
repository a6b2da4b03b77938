"""Where the training-set audit's FID changes when its real side moves from the 200-subject held-out test set (drawn
with replacement to n = 500) to the fresh 2,000-subject cohort: the same attribute-net features as the audit
(evaluation/training_set.py, seed 0), one table of FID / bound at several pools and n.

    OMP_NUM_THREADS=1 python -m bench.fid_pools runs/tiny-stats docs/results/tiny-stats/evaluation/fid_pools.json

Rows: the old audit (test set, n = 500, with replacement), the new one (fresh cohort, n = 500), both pools at an n
each can give without replacement (100 a side), and the fresh cohort cut to 200 subjects and drawn with replacement
to n = 500 as the old audit did (does replacement alone inflate the bound?).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from data.atomic import atomic_write_bytes
from evaluation.attribute_net import train_attribute_net
from evaluation.attributes import attribute_labels
from evaluation.training_fid import equal_n_fid
from evaluation.training_set import RECOVERED
from run.config import load_run_config
from run.downstream import fid_reference, load_planned
from run.prepare_data import prepare_data


def main(run_dir: Path, out: Path) -> dict:
    cfg = load_run_config(run_dir / "config.yaml")
    ts = cfg.evaluation.training_set
    data = prepare_data(cfg.data, run_dir, progress=False)
    fresh = fid_reference(cfg, data, run_dir)[0]
    synthetic = load_planned(run_dir)[1]
    net = train_attribute_net(data.train.images, attribute_labels(data.train.attributes, use_numbers=True), RECOVERED,
                              ts.epochs, seed=0)
    f_test, f_fresh, f_syn = (net.features(s.images) for s in (data.test, fresh, synthetic))
    ids_test, ids_fresh = np.asarray(data.test.subject_ids), np.asarray(fresh.subject_ids)
    cut = np.isin(ids_fresh, np.random.default_rng(1).permutation(np.unique(ids_fresh))[:200])
    rows = {"test set, n=500 (old audit)": (f_test, ids_test, 500),
            "fresh cohort, n=500 (new audit)": (f_fresh, ids_fresh, 500),
            "test set, n=100": (f_test, ids_test, 100),
            "fresh cohort, n=100": (f_fresh, ids_fresh, 100),
            "fresh cohort cut to 200 subjects, n=500": (f_fresh[cut], ids_fresh[cut], 500)}
    result = {}
    for name, (real, ids, n) in rows.items():
        r = equal_n_fid(real, ids, f_syn, n, ts.fid_repeats, seed=0)
        result[name] = {"fid": r["fake_vs_real"]["mean"], "fid_std": r["fake_vs_real"]["std"],
                        "bound": r["real_vs_real_bound"]["mean"], "bound_std": r["real_vs_real_bound"]["std"],
                        "ratio": r["ratio"], "n_per_side": n, "real_images": len(real),
                        "with_replacement": r["with_replacement"]}
        print(f"{name}: FID {r['fake_vs_real']['mean']:.3g}, bound {r['real_vs_real_bound']['mean']:.3g}, "
              f"ratio {r['ratio']:.3g}, with replacement {r['with_replacement']}", flush=True)
    atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
