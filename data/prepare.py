"""Cohort on disk (or the embedded synthetic one) -> preprocessed train/test slice sets, split by subject."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.reader import attributes_table, read_cohort
from data.slices import SliceSet, build_slice_set
from data.split import subject_split
from data.subgroups import save_composition, subgroup_table
from ddpm.checkpoint import atomic_write_bytes


@dataclass
class PreparedData:
    train: SliceSet
    test: SliceSet
    cohort_root: Path
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def synthetic_cohort(out_dir: Path, n: int, seed: int) -> Path:
    """Generate the embedded cohort once; a marker file makes a half-written cohort regenerate."""
    from data.synthetic import generate_cohort

    marker = out_dir / ".complete"
    if not marker.is_file() or marker.read_text() != f"{n} {seed}":
        generate_cohort(out_dir, n, seed)
        marker.write_text(f"{n} {seed}")
    return out_dir


def prepare_data(cfg, run_dir: Path, progress: bool = True) -> PreparedData:
    """cfg: ddpm.run_config.DataConfig. Writes composition.csv and split.json into run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.root is None:
        root = synthetic_cohort(run_dir / "cohort", cfg.synthetic_n, cfg.synthetic_seed)
    else:
        root = Path(cfg.root)
    cohort = read_cohort(root, cfg.layout, cfg.metadata, cfg.skip_bad)
    save_composition(subgroup_table(attributes_table(cohort)), run_dir / "composition.csv")
    slices = build_slice_set(cohort.subjects, cfg.preprocess, run_dir / "cache", progress=progress)
    strata = slices.attributes["health"].fillna("unknown").astype(str)
    train_idx, test_idx = subject_split(slices.subject_ids, strata, cfg.test_fraction, cfg.split_seed)
    split = {"train": sorted({slices.subject_ids[i] for i in train_idx}), "test": sorted({slices.subject_ids[i] for i in test_idx})}
    atomic_write_bytes(run_dir / "split.json", json.dumps(split, indent=1).encode())
    return PreparedData(slices.select(np.asarray(train_idx)), slices.select(np.asarray(test_idx)),
                        root, cohort.layout, cohort.skipped)
