"""Patient-level stratified k-fold cross-validation of the whole debiasing experiment (`cv.folds > 0`; issue 14).

    python train.py --config configs/acdc-cv.yaml --data ../shared/data/acdc

Per fold seed s, the cohort's subjects are partitioned into cv.folds folds, stratified by data.stratify (health
group and BMI category; data/split.py:stratified_folds). Fold i is a complete sub-run folds/seed-<s>/fold-<i>/ of
the ordinary stage table (run/stages.py: VAE, LDM, ControlNet, plan, arms), with data.folds / data.fold /
data.split_seed set so that its data stage holds out exactly fold i: data.rare, the generator's training, the plan's
mask donors and every classifier see that fold's training subjects only. The evaluation stage is skipped unless
cv.evaluate (no later stage reads it). When every fold of every fold seed is done, each patient's slice
probabilities are averaged (classify/patients.py), the folds pooled, and the experiment's statistics run once over
all patients -> experiment/experiment.json, subgroups.csv, cv.json (per fold: split sizes, donor diversity,
stage seconds), folds/seed-<s>/split.json (patient ids only), report.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from classify.patients import pool_folds
from classify.report import experiment_section, markdown_table, reproduce_section, write_report
from data.atomic import atomic_write_bytes
from data.errors import InputError
from data.json_ready import json_ready, read_json_object
from data.plan_csv import load_plan
from data.planner import DONORS, cell_keys, plan_rebalancing, planning_attributes
from evaluation.diversity import mask_diversity
from run.config import CVConfig, RunConfig
from run.downstream import real_split
from run.loader import to_dict
from run.lock import run_lock
from run.prepare_data import prepare_data
from run.samples import plan_requests
from run.stages import STAGE, run_stages

ATTRIBUTES = ["subject_id", "sex", "age", "bmi", "health"]


def fold_config(cfg: RunConfig, fold_seed: int, fold: int) -> RunConfig:
    """The sub-run config of one fold: the run's config holding out fold `fold` of the partition seeded fold_seed."""
    data = replace(cfg.data, folds=cfg.cv.folds, fold=fold, split_seed=fold_seed)
    return replace(cfg, name=f"{cfg.name}-s{fold_seed}-f{fold}", data=data, cv=CVConfig())


def fold_folder(run_dir: Path, fold_seed: int, fold: int) -> Path:
    return Path(run_dir) / "folds" / f"seed-{fold_seed}" / f"fold-{fold}"


def donor_diversity(cfg: RunConfig, folder: Path, train) -> dict:
    """Per donor strategy: how many geometries the rare group's synthetic control masks hold (after jitter /
    deform), beside the group's real training masks. The run's own strategy is read from its plan.csv; the others
    are planned (not sampled) on the same training slices, so each fold records what every strategy would give.
    train: the real training SliceSet the plan drew from."""
    key, value = (cfg.data.rare.key, cfg.data.rare.value) if cfg.data.rare else ("health", None)

    def in_group(table: pd.DataFrame) -> np.ndarray:  # rows of the rare group (every row without data.rare)
        return np.ones(len(table), bool) if value is None else (cell_keys(table, (key,))[key] == value).to_numpy()

    plans = {cfg.plan.donors: load_plan(folder / "plan.csv")}
    for other in (d for d in DONORS if d != cfg.plan.donors):
        plans[other] = plan_rebalancing(planning_attributes(train), replace(cfg.plan, donors=other), cfg.data.split_seed)
    out = {"strategy": cfg.plan.donors, "group": value or "all"}
    for name, plan in plans.items():
        rows = plan[in_group(plan)]
        if len(rows):
            masks = np.stack([r.mask for r in plan_requests(rows, cfg, slices=train)])
            out[name] = mask_diversity(masks, list(rows["mask_subject_id"])) | {"n_donor_slices": int(rows["mask_row"].nunique())}
    real = np.flatnonzero(in_group(train.attributes))
    if len(real):
        out["real"] = mask_diversity(train.masks[real], [train.subject_ids[i] for i in real])
    return out


def fold_record(cfg: RunConfig, folder: Path, fold_seed: int, fold: int, seconds: float) -> dict:
    """What a finished fold contributes: its split (checked disjoint), test patients' attributes, donor diversity,
    its stage seconds (timings.json: as each stage ran) and this call's seconds (small when the stages were reused)."""
    split = read_json_object(folder / "split.json", "fold split")
    leaked = set(split["train"]) & set(split["test"])
    if leaked:
        raise InputError(folder / "split.json", f"test patient(s) {sorted(leaked)[:3]} in the fold's training data")
    with contextlib.redirect_stdout(io.StringIO()):  # cached: the fold's data stage already said it all
        data = prepare_data(cfg.data, folder, progress=False)
    record = {"fold_seed": fold_seed, "fold": fold, "folder": str(folder), "call_seconds": round(seconds, 1),
              "stage_seconds": read_json_object(folder / "timings.json", "stage timings")
              if (folder / "timings.json").is_file() else {},
              "n_train": len(split["train"]), "n_test": len(split["test"]), "test": split["test"],
              "train": split["train"], "rare_dropped": (split.get("rare") or {}).get("dropped", []),
              "attributes": data.test.attributes.drop_duplicates("subject_id")[ATTRIBUTES]}
    if (folder / "plan.csv").is_file():
        record["donors"] = donor_diversity(cfg, folder, real_split(cfg, data, "train"))
    if (folder / STAGE["experiment"].output).is_file():
        record["experiment"] = read_json_object(folder / STAGE["experiment"].output, "fold experiment")
    return record


def write_splits(run_dir: Path, cfg: RunConfig, records: list[dict]) -> None:
    """folds/seed-<s>/split.json: per fold its test, training and dropped (data.rare) patient ids; a complete
    partition is checked: every patient tested exactly once."""
    for seed in cfg.cv.fold_seeds:
        mine = [r for r in records if r["fold_seed"] == seed]
        if not mine:
            continue
        everyone = sorted(set(mine[0]["train"]) | set(mine[0]["test"]) | set(mine[0]["rare_dropped"]))
        tested = [p for r in mine for p in r["test"]]
        complete = len(mine) == cfg.cv.folds
        if complete and sorted(tested) != everyone:
            raise InputError(run_dir / "folds", f"fold seed {seed}: the folds do not test every patient exactly once")
        split = {"fold_seed": seed, "folds": cfg.cv.folds, "stratify": list(cfg.data.stratify), "patients": everyone,
                 "complete": complete, "per_fold": [{k: r[k] for k in ("fold", "test", "train", "rare_dropped")}
                                                   for r in mine]}
        atomic_write_bytes(run_dir / "folds" / f"seed-{seed}" / "split.json", json.dumps(split, indent=1).encode())


def run_cv(cfg: RunConfig, run_dir: Path, upto: str = "all", resume: bool = False, force: tuple[str, ...] = (),
           commands: tuple[str, ...] = ()) -> Path:
    """Every fold of every fold seed through the stage table, then (upto all, every fold done) the pooled
    patient-level statistics and report.md; returns the run folder."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
        folds = tuple(cfg.cv.only_folds) or tuple(range(cfg.cv.folds))
        skip = () if cfg.cv.evaluate else ("evaluation",)
        records = []
        for seed in cfg.cv.fold_seeds:
            for fold in folds:
                folder, fcfg = fold_folder(run_dir, seed, fold), fold_config(cfg, seed, fold)
                print(f"[cv] fold seed {seed}, fold {fold} of {cfg.cv.folds} -> {folder}", flush=True)
                tic = time.perf_counter()
                run_stages(fcfg, folder, "experiment" if upto == "all" else upto, resume, force, commands, skip)
                records.append(fold_record(fcfg, folder, seed, fold, time.perf_counter() - tic))
            write_splits(run_dir, cfg, records)
        summary = [{k: v for k, v in r.items() if k not in ("experiment", "attributes", "train", "test")}
                   for r in records]
        atomic_write_bytes(run_dir / "cv.json", json.dumps(json_ready({"folds": summary}), indent=1).encode())
        done = all("experiment" in r for r in records) and len(folds) == cfg.cv.folds
        if upto == "all" and done:
            attributes = pd.concat([r["attributes"] for r in records], ignore_index=True)
            result = pool_folds(records, attributes, cfg.experiment)
            result.save(run_dir / "experiment")
            print(f"[cv] pooled {len(records)} folds -> {write_cv_report(run_dir, cfg, records, commands)}")
        elif upto == "all":
            print("[cv] not every fold ran (cv.only_folds): no pooled statistics; per-fold results in folds/")
    return run_dir


def _fold_rows(records: list[dict]) -> list[list]:
    rows = []
    for r in records:
        donors = r.get("donors", {})
        cells = [f"{donors[d]['n_masks']} / {donors[d]['n_donors']} / {donors[d]['n_distinct_masks']} / "
                 f"{donors[d]['mean_pairwise_dice']:.3f}" if d in donors else "-" for d in (*DONORS, "real")]
        rows.append([r["fold_seed"], r["fold"], r["n_train"], r["n_test"], len(r["rare_dropped"]), *cells,
                     f"{sum(r['stage_seconds'].values()):.0f}"])
    return rows


def write_cv_report(run_dir: Path, cfg: RunConfig, records: list[dict], commands: tuple[str, ...]) -> Path:
    """report.md: design, per-fold splits and donor diversity, the pooled patient-level arms, how to rerun."""
    experiment = read_json_object(run_dir / "experiment" / "experiment.json", "pooled experiment")
    rare = cfg.data.rare
    design = (f"{cfg.cv.folds}-fold patient-level cross-validation, stratified by {', '.join(cfg.data.stratify)}, "
              f"fold seeds {list(cfg.cv.fold_seeds)}; one generator trained per fold on its training patients; "
              + (f"{rare.key} = {rare.value} kept at {rare.keep:g} among each fold's training patients; " if rare else "")
              + f"plan donors: {cfg.plan.donors}. Scores are per patient (mean of slice probabilities); in the tables "
              "below 'generators' is the fold-seed level and the counted rows are patients.")
    headers = ["fold seed", "fold", "train patients", "test patients", "dropped (rare)",
               *[f"{d}: masks / donors / distinct / mean pairwise Dice" for d in DONORS], "real rare group: same",
               "stage seconds (as trained)"]
    sections = {"Design": design, "Folds and donor diversity": markdown_table(headers, _fold_rows(records)),
                "Debiasing, pooled over folds (patients)": experiment_section(experiment, unit="patients"),
                "Reproduce": reproduce_section(list(commands), yaml.safe_dump(to_dict(cfg), sort_keys=False))}
    return write_report(run_dir / "report.md", sections, title="cardiac-ldm: cross-validated debiasing")
