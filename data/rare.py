"""Make one group rare among a cohort's TRAINING subjects (`data.rare`), for the real-data debiasing arm.

A balanced cohort (ACDC: 16 patients per group) gives a rebalancing plan nothing to fix. Keeping only a fraction
of one group's training subjects creates the imbalance a real registry has, while the held-out test subjects stay
as they are, so every arm is scored on the same patients as a run without `data.rare`. The drop happens in the
data stage, before every generative stage: the VAE, LDM and ControlNet see the group as rare too, as they would
in practice, and the plan can only draw masks from the subjects that are left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from data.errors import InputError
from data.planner import KEY_VALUES, cell_keys


@dataclass(frozen=True)
class RareGroup:
    """Keep round(keep * n) of the n training subjects whose `key` is `value` (at least 1)."""

    key: str = "health"  # health | sex | age_group | bmi_group (the plan's cell keys)
    value: Optional[str] = None  # e.g. myocardial_infarction
    keep: float = 0.25

    def __post_init__(self) -> None:
        if self.key not in KEY_VALUES:
            raise InputError("data.rare.key", f"unknown key {self.key!r}; expected one of {', '.join(KEY_VALUES)}")
        if self.value not in KEY_VALUES[self.key]:
            raise InputError("data.rare.value", f"unknown {self.key} {self.value!r}; expected one of "
                                                f"{', '.join(KEY_VALUES[self.key])}")
        if not 0.0 < self.keep <= 1.0:
            raise InputError("data.rare.keep", f"expected a fraction in (0, 1], got {self.keep}")


def members(attributes: pd.DataFrame, rare: RareGroup, who: str = "training subjects") -> list[str]:
    """Sorted ids of the subjects in the group; InputError listing the groups present when there are none.

    attributes: rows with subject_id, sex, age, bmi, health (one per subject or per slice)."""
    values = cell_keys(attributes, (rare.key,))[rare.key]
    ids = sorted(set(attributes["subject_id"][values == rare.value].astype(str)))
    if not ids:
        present = [v for v in KEY_VALUES[rare.key] if v in set(values)]
        raise InputError("data.rare.value", f"none of the {who} has {rare.key} {rare.value!r}; they have "
                                            f"{', '.join(present) or f'no {rare.key}'}")
    return ids


def make_rare(train, rare: RareGroup, seed: int):
    """train: SliceSet of the training subjects -> (the SliceSet without the dropped subjects, summary dict:
    key, value, keep, seed, n_subjects (in the group before), kept and dropped subject ids)."""
    group = members(train.attributes, rare)
    n_keep = math.floor(rare.keep * len(group) + 0.5)  # round half up: keep 0.25 of 12 -> 3, of 2 -> 1
    if n_keep < 1:
        raise InputError("data.rare.keep", f"{rare.keep} of the {len(group)} training subjects with {rare.key} "
                                           f"{rare.value!r} keeps none; expected at least 1 "
                                           f"(keep >= {0.5 / len(group):.3g})")
    kept = sorted(np.random.default_rng(seed).permutation(group)[:n_keep].tolist())
    dropped = sorted(set(group) - set(kept))
    keep_rows = ~np.isin(np.asarray(train.subject_ids), dropped)
    summary = {"key": rare.key, "value": rare.value, "keep": rare.keep, "seed": int(seed),
               "n_subjects": len(group), "kept": kept, "dropped": dropped}
    return train.select(keep_rows), summary


def describe(summary: dict) -> str:
    """One line for the log and the report."""
    return (f"{summary['key']} = {summary['value']} made rare in the training subjects: kept {len(summary['kept'])} "
            f"of {summary['n_subjects']} (keep {summary['keep']:g}, seed {summary['seed']}); "
            f"dropped {', '.join(summary['dropped']) or 'none'}")
