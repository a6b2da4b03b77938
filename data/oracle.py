"""Extra REAL phantom subjects with given attributes: the "oracle" arm's real rebalancing (phantom track only).

One subject per requested row (sex, age, bmi, health), rendered by the phantom like the training cohort, written
in the ukbb layout and read back through the same reader and preprocessing, one slice per subject.
Subject k draws from SeedSequence(seed, spawn_key=(k, ORACLE_STREAM)): a stream no cohort uses (metadata is
stream 0 and images stream 1 of any seed), so the extra subjects are disjoint from the training and test cohorts
whatever their seeds; their eids start at FIRST_ORACLE_EID, far from those cohorts' (1000001, 2000001).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from data.atomic import atomic_write_bytes
from data.attributes import Attributes
from data.errors import InputError
from data.phantom import cohort_affine, render_subject
from data.preprocess import PreprocessConfig
from data.reader import read_cohort
from data.slices import SliceSet, build_slice_set
from data.synthetic import DEFAULT_SHAPE, SUBJECT_FILES, _subject_rng, nifti_gz_bytes

ORACLE_STREAM = 2
FIRST_ORACLE_EID = 9000001
REQUIRED = ("sex", "age", "bmi", "health")


def write_oracle_cohort(out_dir: Path, wanted: pd.DataFrame, seed: int,
                        shape: tuple[int, int, int] = DEFAULT_SHAPE) -> Path:
    """wanted: one row per subject with sex, age, bmi, health -> out_dir in the ukbb layout (cached by content)."""
    missing = [c for c in REQUIRED if c not in wanted.columns]
    if missing:
        raise InputError("oracle subjects", f"missing column(s) {', '.join(missing)}")
    metadata = pd.DataFrame({"eid": FIRST_ORACLE_EID + np.arange(len(wanted)), "sex": list(wanted["sex"]),
                             "age": [float(a) for a in wanted["age"]], "bmi": [float(b) for b in wanted["bmi"]],
                             "health": list(wanted["health"])})
    csv = metadata.to_csv(index=False, float_format="%.1f", lineterminator="\n")
    key = hashlib.sha256(json.dumps([csv, int(seed), list(shape)]).encode()).hexdigest()
    marker = out_dir / ".complete"
    if marker.is_file() and marker.read_text() == key:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    affine = cohort_affine(shape)
    for k, row in enumerate(metadata.itertuples(index=False)):
        attrs = Attributes(sex=row.sex, age=float(row.age), bmi=float(row.bmi), health=row.health)
        volumes = render_subject(attrs, _subject_rng(int(seed), k, ORACLE_STREAM), shape)
        (out_dir / str(row.eid)).mkdir(exist_ok=True)
        for name in SUBJECT_FILES:
            atomic_write_bytes(out_dir / str(row.eid) / name, nifti_gz_bytes(volumes[name.removesuffix(".nii.gz")],
                                                                            affine))
    atomic_write_bytes(out_dir / "metadata.csv", csv.encode())
    marker.write_text(key)
    return out_dir


def oracle_slices(out_dir: Path, wanted: pd.DataFrame, seed: int, preprocess: PreprocessConfig,
                  shape: tuple[int, int, int] = DEFAULT_SHAPE) -> SliceSet:
    """The requested subjects as a SliceSet, one (mid-LV) slice each, in `wanted` order."""
    root = write_oracle_cohort(Path(out_dir), wanted, seed, shape)
    one_slice = replace(preprocess, slice_offsets=(0,), all_lv_slices=False)
    cohort = read_cohort(root, "ukbb")
    return build_slice_set(cohort.subjects, one_slice, progress=False)
