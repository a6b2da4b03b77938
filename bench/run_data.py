"""A finished run's train / held-out split, rebuilt read-only for the benches that sample and judge its held-out
patients (bench.sampling_quality, bench.time_to_quality, bench.texture)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from data.errors import InputError
from run.prepare_data import PreparedData, prepare_data


def run_data(run: Path, cfg, scratch: Path) -> PreparedData:
    """The run's train / held-out split: a real cohort from the run's slice cache; the phantom from the run's cohort
    folders and slice caches where it has them (copied, so the run stays untouched), else redrawn (same seeds)."""
    if cfg.data.root is None:
        for name in ("cohort", "cohort-test"):
            if (run / name / ".complete").is_file():
                shutil.copytree(run / name, scratch / name)
        for cache in (run / "cache").glob("slices-*.npz"):
            (scratch / "cache").mkdir(exist_ok=True)
            shutil.copyfile(cache, scratch / "cache" / cache.name)
        return prepare_data(cfg.data, scratch, progress=False)
    cached = sorted((run / "cache").glob("slices-*.npz"))
    if len(cached) != 1:
        raise InputError(run / "cache", f"expected one slices-*.npz of a real cohort, found {len(cached)}")
    return prepare_data(replace(cfg.data, root=str(cached[0])), scratch, progress=False)
