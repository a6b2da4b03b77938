"""Cohort on disk (or the embedded synthetic one) -> preprocessed train/test slice sets, split by subject."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from data.atomic import atomic_write_bytes
from data.rare import describe, make_rare, members
from data.reader import attributes_table, read_cohort
from data.errors import InputError
from data.planner import cell_keys
from data.preprocess import config_hash
from data.slices import SliceSet, build_slice_set
from data.split import stratified_folds, subject_split
from data.subgroups import save_composition, subgroup_table
from data.phantom import KNOBS_OFF, PhantomKnobs
from data.synthetic import generate_cohort


@dataclass
class PreparedData:
    train: SliceSet
    test: SliceSet
    cohort_root: Path
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rare: Optional[dict] = None  # data.rare's summary (kept and dropped training subjects), None when off


def synthetic_cohort(out_dir: Path, n: int, seed: int, prevalence: str = "biased", first_eid: int = 1000001,
                     knobs: PhantomKnobs = KNOBS_OFF) -> Path:
    """Generate the embedded cohort once; a marker file makes a half-written or different cohort regenerate.
    Knobs off leave the key as it was, so cohorts made before the knobs existed are reused."""
    key = f"{n} {seed} {prevalence} {first_eid}" + ("" if knobs.off else f" {json.dumps(asdict(knobs), sort_keys=True)}")
    marker = out_dir / ".complete"
    if not marker.is_file() or marker.read_text() != key:
        generate_cohort(out_dir, n, seed, prevalence=prevalence, first_eid=first_eid, progress=True, knobs=knobs)
        marker.write_text(key)
    return out_dir


def prepare_data(cfg, run_dir: Path, progress: bool = True) -> PreparedData:
    """cfg: run.config.DataConfig. Writes composition.csv and split.json into run_dir."""
    if cfg.root is None:
        return _prepare_synthetic(cfg, run_dir, progress)
    if not cfg.phantom.off:
        raise InputError("data.phantom", "the phantom's knobs shape the embedded synthetic cohort only; "
                                         f"data.root is set ({cfg.root}): remove data.phantom")
    root = Path(cfg.root)
    if root.is_file() and root.suffix == ".npz":
        return _prepare_from_slices(cfg, root, run_dir)
    # Read and preprocess before writing anything: a bad cohort leaves no half-made run folder.
    cohort = read_cohort(root, cfg.layout, cfg.metadata, cfg.skip_bad)
    if cfg.rare is not None:  # a group the cohort lacks fails here, before anything is written
        members(attributes_table(cohort), cfg.rare, "cohort's subjects")
    # The slice cache holds the whole cohort: the split and data.rare select from it, so neither changes its key.
    slices = build_slice_set(cohort.subjects, cfg.preprocess, run_dir / "cache", progress=progress)
    return _split(cfg, slices, attributes_table(cohort), root, cohort.layout, cohort.skipped, run_dir)


def _prepare_from_slices(cfg, path: Path, run_dir: Path) -> PreparedData:
    """A run's cached slice set (<run>/cache/slices-*.npz) as the cohort: small enough to carry to another
    machine when the raw cohort cannot travel. Its preprocessing must be this config's."""
    slices = SliceSet.load(path)
    if not path.name.startswith(f"slices-{config_hash(cfg.preprocess)}-"):
        raise InputError(path, f"was not made with this config's data.preprocess (expected a name starting "
                               f"slices-{config_hash(cfg.preprocess)}-); rebuild it from the cohort folder")
    table = slices.attributes.drop_duplicates("subject_id")[["subject_id", "sex", "age", "bmi", "health"]]
    if cfg.rare is not None:
        members(table, cfg.rare, "slice set's subjects")
    (run_dir / "cache").mkdir(parents=True, exist_ok=True)
    slices.save(run_dir / "cache" / path.name)  # sample.py --run finds the plan's mask rows here
    return _split(cfg, slices, table.reset_index(drop=True), path, "slice set", [], run_dir)


def _split(cfg, slices: SliceSet, subjects, root: Path, layout: str, skipped: list, run_dir: Path) -> PreparedData:
    """Split by subject (stratified by data.stratify; under data.folds the held-out fold of a stratified k-fold
    partition), apply data.rare to the training part, write composition/split."""
    cells = cell_keys(slices.attributes, tuple(cfg.stratify)).fillna("unknown").astype(str)
    strata = cells.apply("|".join, axis=1) if len(cells) else pd.Series([], dtype=str)
    if cfg.folds:
        in_test = stratified_folds(slices.subject_ids, strata, cfg.folds, cfg.split_seed) == cfg.fold
        train_idx, test_idx = np.flatnonzero(~in_test), np.flatnonzero(in_test)
    else:
        train_idx, test_idx = subject_split(slices.subject_ids, strata, cfg.test_fraction, cfg.split_seed)
    # data.rare drops training subjects only, after the split: the test set is the one a run without it holds.
    train, rare = _make_rare(slices.select(np.asarray(train_idx)), cfg)
    save_composition(subgroup_table(subjects), run_dir / "composition.csv")
    prepared = PreparedData(train, slices.select(np.asarray(test_idx)), root, layout, skipped, rare)
    _save_split(prepared, run_dir)
    return prepared


def _make_rare(train: SliceSet, cfg) -> tuple[SliceSet, Optional[dict]]:
    if cfg.rare is None:
        return train, None
    train, summary = make_rare(train, cfg.rare, cfg.split_seed)
    print(f"[data] rare group: {describe(summary)}")
    return train, summary


def _prepare_synthetic(cfg, run_dir: Path, progress: bool) -> PreparedData:
    """Biased training cohort + a separate balanced test cohort (disjoint ids, different seed)."""
    # the knobs act on both cohorts: the test population shows the disease the way the training one does
    train_root = synthetic_cohort(run_dir / "cohort", cfg.synthetic_n, cfg.synthetic_seed, knobs=cfg.phantom)
    test_root = synthetic_cohort(run_dir / "cohort-test", cfg.synthetic_test_n, cfg.synthetic_seed + 1,
                                 prevalence="balanced", first_eid=2000001, knobs=cfg.phantom)
    train_cohort = read_cohort(train_root, "ukbb")
    test_cohort = read_cohort(test_root, "ukbb")
    save_composition(subgroup_table(attributes_table(train_cohort)), run_dir / "composition.csv")
    save_composition(subgroup_table(attributes_table(test_cohort)), run_dir / "composition-test.csv")
    train = build_slice_set(train_cohort.subjects, cfg.preprocess, run_dir / "cache", progress=progress)
    test = build_slice_set(test_cohort.subjects, cfg.preprocess, run_dir / "cache", progress=progress)
    train, rare = _make_rare(train, cfg)  # the whole first cohort is the training set here
    prepared = PreparedData(train, test, train_root, "ukbb (synthetic)", rare=rare)
    _save_split(prepared, run_dir)
    return prepared


def fresh_test_set(cfg, fresh, run_dir: Path, progress: bool = True) -> SliceSet:
    """cfg: DataConfig; fresh: FreshTestConfig. fresh.n subjects of a balanced embedded cohort drawn with fresh.seed
    (ids from 3000001, disjoint from the training and test cohorts'): the experiment's final test set, which no
    generative stage or plan has read (the training-set audit compares realism with it: downstream.fid_reference).
    The phantom's knobs act on it as on the other two cohorts: it shows the disease the way they do."""
    root = synthetic_cohort(run_dir / "cohort-fresh", fresh.n, fresh.seed, prevalence="balanced", first_eid=3000001,
                            knobs=cfg.phantom)
    cohort = read_cohort(root, "ukbb")
    save_composition(subgroup_table(attributes_table(cohort)), run_dir / "composition-fresh.csv")
    return build_slice_set(cohort.subjects, cfg.preprocess, run_dir / "cache", progress=progress)


def _save_split(prepared: PreparedData, run_dir: Path) -> None:
    split = {"train": sorted(set(prepared.train.subject_ids)), "test": sorted(set(prepared.test.subject_ids))}
    if prepared.rare is not None:
        split["rare"] = prepared.rare  # the dropped subjects are in neither list
    atomic_write_bytes(run_dir / "split.json", json.dumps(split, indent=1).encode())
