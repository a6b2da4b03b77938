"""Patient-level scoring and the pooling of cross-validation folds (run/cv.py).

A classifier sees every slice of a patient, but the patient is the unit of diagnosis and of sampling: scoring
slices as if independent counts one patient many times (pseudo-replication). A patient's score is the mean of its
slice probabilities; its decision is that mean at the experiment's THRESHOLD. Pooling k folds gives every patient
exactly one score per fold seed and classifier seed; the experiment's own statistics (paired hierarchical
bootstrap, primary endpoint, Holm, error counts, MDE: classify/experiment.py:analyse_runs) then run ONCE over all
patients, with the fold seed on the bootstrap's middle level (where an ordinary run has its generators): a fold
seed is a new partition and new per-fold generators, so resampling fold seeds carries the split's and the
generators' variance.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from classify.experiment import ExperimentConfig, analyse_runs, run_record
from classify.experiment_result import ExperimentResult
from data.errors import InputError

POOLED_LEVELS = {"subjects": "patients", "seeds": "classifier seeds", "generators": "fold seeds"}


def patient_scores(scores, subject_ids) -> tuple[list[str], np.ndarray]:
    """(N,) slice scores and their patients -> (patients sorted by id, (P,) mean score of each patient's slices)."""
    scores, ids = np.asarray(scores, dtype=float), np.asarray(subject_ids).astype(str)
    if scores.shape != ids.shape or scores.ndim != 1 or not len(ids):
        raise InputError("patient_scores", f"expected one score per slice id, got {scores.shape} scores and "
                                           f"{ids.shape} ids")
    frame = pd.DataFrame({"id": ids, "score": scores}).groupby("id", sort=True)["score"].mean()
    return list(frame.index), frame.to_numpy()


def patient_labels(labels, subject_ids) -> dict[str, int]:
    """Slice labels -> one label per patient; InputError when a patient's slices disagree."""
    table = pd.DataFrame({"id": np.asarray(subject_ids).astype(str), "y": np.asarray(labels, dtype=int)})
    mixed = table.groupby("id")["y"].nunique()
    if (mixed > 1).any():
        raise InputError("patient_labels", f"patient {mixed[mixed > 1].index[0]!r} has slices with both labels")
    return table.groupby("id")["y"].first().to_dict()


def pool_folds(folds: Sequence[dict], attributes: pd.DataFrame, exp_cfg: ExperimentConfig) -> ExperimentResult:
    """Every fold's experiment.json -> one ExperimentResult at the patient level over all patients.

    folds: one dict per (fold seed, fold): fold_seed, fold, experiment (the fold's experiment.json as a dict);
    each fold seed's folds must test every patient exactly once, and every fold seed the same patients.
    attributes: one row per patient (subject_id, sex, age, bmi, health), for the per-group metrics.
    An arm is pooled where every fold ran it (one generator per fold); others are listed as skipped."""
    seeds = sorted({f["fold_seed"] for f in folds})
    tested = {s: [i for f in folds if f["fold_seed"] == s for i in dict.fromkeys(f["experiment"]["test"]["subject_ids"])]
              for s in seeds}
    patients = sorted(tested[seeds[0]]) if seeds else []
    for s, ids in tested.items():
        if len(ids) != len(set(ids)) or sorted(ids) != patients:
            raise InputError(f"cv fold seed {s}", "its folds do not test every patient exactly once "
                                                  f"({len(ids)} tests of {len(set(ids))} patients, {len(patients)} expected)")
    labels = {}
    for f in folds:
        labels.update(patient_labels(f["experiment"]["test"]["labels"], f["experiment"]["test"]["subject_ids"]))
    y = np.array([labels[p] for p in patients], dtype=np.int64)
    table = attributes.assign(subject_id=attributes["subject_id"].astype(str)).drop_duplicates("subject_id")
    groups = table.set_index("subject_id").reindex(patients).reset_index()
    if groups["health"].isna().any():
        raise InputError("cv attributes", "missing patients: expected one row per tested patient")
    arm_sets = [[r["arm"] for r in f["experiment"]["runs"]] for f in folds]
    arms = [a for a in dict.fromkeys(arm_sets[0]) if all(a in s for s in arm_sets)]
    first = folds[0]["experiment"]
    result = ExperimentResult(
        config={**first["config"], "unit": "patient (mean of slice probabilities)", "fold_seeds": seeds,
                "n_generators": len(seeds), "levels": POOLED_LEVELS,
                "intervals": "95% hierarchical bootstrap: patients, then fold seeds, then classifier seeds within each"},
        test={"n_slices": sum(len(f["experiment"]["test"]["subject_ids"]) for f in folds if f["fold_seed"] == seeds[0]),
              "n_subjects": len(patients), "n_positive": int(y.sum()), "subject_ids": patients, "labels": y},
        skipped={a: "not run in every fold" for s in arm_sets for a in s if a not in arms})
    columns = tuple(exp_cfg.groups)
    for arm in arms:
        for g, s in enumerate(seeds):
            runs = [(f, r) for f in folds if f["fold_seed"] == s for r in f["experiment"]["runs"] if r["arm"] == arm]
            if any(r.get("generator") not in (None, 0) for _, r in runs):
                raise InputError("cv", f"arm {arm} has several generators in a fold; expected one generator per fold")
            for seed in dict.fromkeys(r["seed"] for _, r in runs):
                score, n_train = {}, []
                for f, r in runs:
                    if r["seed"] == seed:
                        ids, means = patient_scores(r["scores"], f["experiment"]["test"]["subject_ids"])
                        score.update(zip(ids, means))
                        n_train.append(r.get("n_train", 0))
                result.runs.append(run_record(arm, g, seed, np.array([score[p] for p in patients]), y, groups,
                                              columns, fold_seed=s, n_train=round(float(np.mean(n_train)))))
    return analyse_runs(result, y, groups, patients, exp_cfg)
