"""Rebalancing plan: which synthetic patients to generate (attributes, prompt, mask donor, seed), one row each.

Cells are health x sex x age group x BMI group (data.attributes bins). "equalise": within each health condition,
every cell is filled up to that condition's largest cell, so the condition no longer depends on sex, age or BMI.
With health as the only key the cells are the conditions themselves, so "equalise" fills every condition up to
the largest one (ACDC's groups, or a group made rare by data.rare); a min_count > 0 is then a floor on every cell.
"min_count": every cell of each condition is filled up to min_count. Geometry comes from a real mask of the same
health and sex (same health only when no real subject of that sex has the condition), drawn without replacement
while the pool lasts, then with replacement and jitter=1 (batch sampling perturbs a reused mask geometrically).

Synthetic labels within a cell (synthetic_labels, equalise and min_count): "deficit" generates each condition's
own deficit, so inside an under-represented cell nearly every synthetic sample has the rare condition (on the tiny
training cohort P(heart failure | synthetic, cell) spans 0.00-1.00 over the 18 cells, against 0.04-0.74 among the
real) and "looks synthetic" predicts the label. "balanced" (default) gives every planned condition of a cell (the non-health keys) the same
number of synthetic samples, the cell's largest deficit, so every cell and condition still reaches its goal.
Balanced rather than matched to the real within-cell prevalence: matched would copy the bias into the synthetic
set (no cell's label share would move), while balanced makes P(label | synthetic, cell) the same 1/k in every cell,
so the synthetic look cannot act differently across subgroups, and under metagroup-weighted sampling (the method's
baseline; real rows then also weigh 1/k per label in every cell) it predicts nothing. The price: a balanced
addition moves a cell's label share towards 1/k, not to the condition's share elsewhere, so after the plan the
label share is closer to equal across cells but not equal as under "deficit" (the two cannot both hold in general;
tiny cohort: P(heart failure | cell) 0.32-0.60 balanced, 0.42-0.45 deficit), and up to k times as many samples
(tiny: 966 against 704). With health as the only key there is no cell besides the label and balancing
would leave the rare condition rare, so deficits stand there. Under max_total a balanced plan rounds the cap down to
a multiple of k.

"copies" (the method's own recipe, Skorupko et al.): `copies` synthetic copies of training rows, each keeping its
own prompt, fields and mask (jitter 0; the seed makes the copy), rows drawn with replacement with probability
proportional to 1 / (number of training rows with the same prompt), so every distinct prompt is drawn equally
often in expectation. keys, min_count and max_total do not apply; conditions restricts the donors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Optional

import numpy as np
import pandas as pd
from scipy import ndimage

from data.attributes import HEALTH_CONDITIONS, SEXES, age_group, bmi_group, make_attributes
from data.errors import InputError
from data.prompts import prompt_from_fields, prompt_to_attributes

KEY_VALUES = {"health": HEALTH_CONDITIONS, "sex": SEXES, "age_group": ("<55", "55-64", "65+"),
              "bmi_group": ("<25", "25-30", ">30")}
# Concrete values are drawn uniformly inside a bin, clipped to a plausible adult range (age 40-80, BMI 18.5-40).
AGE_BINS = {"<55": (40.0, 55.0), "55-64": (55.0, 65.0), "65+": (65.0, 80.0)}
BMI_BINS = {"<25": (18.5, 25.0), "25-30": (25.0, 30.0), ">30": (30.0, 40.0)}
MODES = ("equalise", "min_count", "copies")
# Mask donors: "own" = the drawn real training masks (reused ones jittered: jitter 1); "deform" = every synthetic
# case gets its own geometry-preserving deformation of its donor (jitter 2: a larger random rotation, shift and
# isotropic scale, the same on ED and ES, so area ratios such as the EF proxy survive): more distinct masks from
# the same few donors of a rare group, without another group's anatomy.
DONORS = ("own", "deform")
JITTER_KINDS = 3  # 0 none, 1 small (a reused mask), 2 deform
SYNTHETIC_LABELS = ("balanced", "deficit")
PLAN_COLUMNS = ("sample_id", "sex", "age", "bmi", "health", "prompt", "mask_subject_id", "mask_row", "seed", "jitter")
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class PlanTarget:
    keys: tuple = ("health", "sex", "age_group", "bmi_group")
    mode: str = "equalise"  # equalise | min_count
    min_count: int = 0  # mode min_count: every cell's target; mode equalise: a floor (0 = none)
    conditions: Optional[tuple] = None  # health conditions to synthesise; None = every condition in the data
    max_total: Optional[int] = None  # cap: deficits are then shared out proportionally
    synthetic_labels: str = "balanced"  # balanced | deficit: per-condition counts inside a cell (module docstring)
    copies: int = 0  # mode copies: number of synthetic copies of training rows to draw
    donors: str = "own"  # own | deform (DONORS)

    def __post_init__(self) -> None:
        unknown = [k for k in self.keys if k not in KEY_VALUES]
        if unknown or "health" not in self.keys or len(set(self.keys)) != len(self.keys):
            raise InputError("target.keys", f"got {self.keys}; expected distinct keys from {', '.join(KEY_VALUES)}, including health")
        if self.mode not in MODES:
            raise InputError("target.mode", f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.synthetic_labels not in SYNTHETIC_LABELS:
            raise InputError("target.synthetic_labels", f"unknown value {self.synthetic_labels!r}; expected one of "
                                                        f"{', '.join(SYNTHETIC_LABELS)}")
        if self.donors not in DONORS:
            raise InputError("target.donors", f"unknown value {self.donors!r}; expected one of {', '.join(DONORS)}")
        if self.copies < (1 if self.mode == "copies" else 0):
            raise InputError("target.copies", f"expected a count >= 1 for mode copies (>= 0 otherwise), got {self.copies}")
        lowest = 1 if self.mode == "min_count" else 0
        if self.min_count < lowest:
            raise InputError("target.min_count", f"expected a count >= {lowest} for mode {self.mode}, "
                                                 f"got {self.min_count}")
        bad = [c for c in (self.conditions or ()) if c not in HEALTH_CONDITIONS]
        if bad:
            raise InputError("target.conditions", f"unknown condition(s) {bad}; expected from {', '.join(HEALTH_CONDITIONS)}")
        if self.max_total is not None and self.max_total < 0:
            raise InputError("target.max_total", f"expected a non-negative number, got {self.max_total}")


def planning_attributes(slices, subject_ids: Optional[set] = None) -> pd.DataFrame:
    """SliceSet (optionally only these subjects, e.g. the training split) -> attributes with slice_row."""
    table = slices.attributes.assign(slice_row=np.arange(len(slices)))
    if subject_ids is not None:
        table = table[table["subject_id"].isin(set(subject_ids))]
    return table.reset_index(drop=True)


def cell_keys(attributes: pd.DataFrame, keys: tuple) -> pd.DataFrame:
    """Attributes rows (sex, age, bmi, health) -> their cell values for `keys` (None where a field is missing)."""
    def missing(v):
        return v is None or (not isinstance(v, str) and pd.isna(v))

    columns = {"health": [None if missing(h) else h for h in attributes["health"]],
               "sex": [None if missing(s) else s for s in attributes["sex"]],
               "age_group": [None if missing(a) else age_group(float(a)) for a in attributes["age"]],
               "bmi_group": [None if missing(b) else bmi_group(float(b)) for b in attributes["bmi"]]}
    return pd.DataFrame({k: pd.Series(columns[k], dtype=object, index=attributes.index) for k in keys})


def _check_attributes(attributes: pd.DataFrame) -> None:
    needed = ("subject_id", "slice_row", "sex", "age", "bmi", "health")
    missing = [c for c in needed if c not in attributes.columns]
    if missing:
        raise InputError("attributes", f"missing column(s) {', '.join(missing)}; expected {', '.join(needed)}")
    if attributes.empty:
        raise InputError("attributes", "no real masks to plan from")


def cell_deficits(attributes: pd.DataFrame, target: PlanTarget, seed: int = 0) -> pd.DataFrame:
    """One row per cell of each planned condition: key values, `real` count and `deficit` to generate.
    Over max_total, deficits shrink proportionally (seeded tie-break, so no condition is favoured)."""
    cells = cell_keys(attributes, target.keys)
    counted = cells.dropna()  # rows missing a key field count in no cell (they can still donate masks)
    if counted.empty:
        raise InputError("target.keys", f"no real row has all of {', '.join(target.keys)}; plan on fields the "
                                        "cohort has (e.g. keys health, bmi_group for ACDC)")
    present = [h for h in HEALTH_CONDITIONS if h in set(counted["health"])]
    conditions = present if target.conditions is None else list(target.conditions)
    others = [k for k in target.keys if k != "health"]
    grouped = counted.groupby(list(target.keys)).size().to_dict()
    counts = {(k if isinstance(k, tuple) else (k,)): v for k, v in grouped.items()}
    combos = [dict(zip(others, values)) for values in product(*(KEY_VALUES[k] for k in others))]  # empty cells too
    largest = max(counts.values())  # health alone: the conditions are the cells to equalise
    rows = []
    for health in conditions:
        real = [int(counts.get(tuple({"health": health, **c}[k] for k in target.keys), 0)) for c in combos]
        if target.mode == "min_count":
            goal = target.min_count
        else:  # equalise: up to the condition's largest cell (health alone: the largest condition), min_count a floor
            goal = max(max(real) if others else largest, target.min_count)
        rows += [{"health": health, **c, "real": r, "deficit": max(goal - r, 0)} for c, r in zip(combos, real)]
    table = pd.DataFrame(rows, columns=[*target.keys, "real", "deficit"])
    rng = np.random.default_rng(seed)
    if target.synthetic_labels == "balanced" and others:
        # rows are one block of len(combos) cells per condition: each cell gets its largest deficit in every block
        per_cell = table["deficit"].to_numpy().reshape(len(conditions), len(combos)).max(axis=0)
        if target.max_total is not None and per_cell.sum() * len(conditions) > target.max_total:
            per_cell = _share_out(per_cell, target.max_total // len(conditions), rng)
        table["deficit"] = np.tile(per_cell, len(conditions))
    elif target.max_total is not None and table["deficit"].sum() > target.max_total:
        table["deficit"] = _share_out(table["deficit"].to_numpy(), target.max_total, rng)
    return table


def _share_out(deficits: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Scale deficits to sum to `total`: floors of the proportional shares, then largest remainders (random ties)."""
    quota = deficits * (total / deficits.sum())
    shares = np.floor(quota).astype(int)
    order = np.lexsort((rng.random(len(quota)), -(quota - shares)))
    shares[order[: total - shares.sum()]] += 1
    return shares


class _MaskPools:
    """Draws mask rows: unused rows of the pool in a seeded random order first, then reuse (jitter=1)."""

    def __init__(self, attributes: pd.DataFrame, rng: np.random.Generator) -> None:
        self.attributes, self.rng = attributes, rng
        self.used: set[int] = set()
        self.orders: dict[tuple, list[int]] = {}

    def _pool(self, health: str, sex: Optional[str]) -> list[int]:
        key = (health, sex)
        if key not in self.orders:
            same = self.attributes["health"] == health
            if sex is not None:
                same &= self.attributes["sex"] == sex
            self.orders[key] = [int(i) for i in self.rng.permutation(np.flatnonzero(same.to_numpy()))]
        return self.orders[key]

    def draw(self, health: str, sex: Optional[str]) -> tuple[int, int, str]:
        """-> (position in attributes, jitter 0/1, match: "health+sex" | "health")."""
        pool, match = self._pool(health, sex), "health+sex" if sex is not None else "health"
        if not pool and sex is not None:
            pool, match = self._pool(health, None), "health"
        if not pool:
            raise InputError("attributes", f"no real mask with health {health!r} to draw the geometry from")
        fresh = next((i for i in pool if i not in self.used), None)
        if fresh is not None:
            self.used.add(fresh)
            return fresh, 0, match
        return pool[int(self.rng.integers(len(pool)))], 1, match


def _draw_value(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # Floor to 0.1 so the rounded value stays inside its half-open bin.
    return math.floor(rng.uniform(*bounds) * 10) / 10


def plan_rebalancing(attributes: pd.DataFrame, target: PlanTarget = PlanTarget(), seed: int = 0) -> pd.DataFrame:
    """attributes: one row per real mask (subject_id, slice_row, sex, age, bmi, health) -> plan, one row per sample.

    Fields that are cell keys are drawn inside the cell's bins; other fields are copied from the mask donor.
    """
    _check_attributes(attributes)
    attributes = attributes.reset_index(drop=True)
    if target.mode == "copies":
        return plan_copies(attributes, target, seed)
    rng = np.random.default_rng(seed)
    pools = _MaskPools(attributes, rng)
    rows = []
    for cell in cell_deficits(attributes, target, seed).itertuples(index=False):
        cell = cell._asdict()
        for _ in range(int(cell["deficit"])):
            pos, jitter, match = pools.draw(cell["health"], cell.get("sex"))
            donor = attributes.iloc[pos]
            age = _draw_value(rng, AGE_BINS[cell["age_group"]]) if "age_group" in cell else donor["age"]
            bmi = _draw_value(rng, BMI_BINS[cell["bmi_group"]]) if "bmi_group" in cell else donor["bmi"]
            sex = cell.get("sex", donor["sex"])
            fields = make_attributes(sex, age, bmi, cell["health"], where=f"donor {donor['subject_id']}")
            # the donor slice's position (base/mid/apex) goes with its mask into the prompt
            position = prompt_to_attributes(str(donor.get("prompt") or "")).position
            rows.append({"sample_id": f"syn-{len(rows):06d}", "sex": fields.sex, "age": fields.age, "bmi": fields.bmi,
                         "health": fields.health, "prompt": prompt_from_fields(**fields.to_dict(), position=position),
                         "mask_subject_id": str(donor["subject_id"]), "mask_row": int(donor["slice_row"]),
                         "seed": int(rng.integers(MAX_SEED)), "jitter": 2 if target.donors == "deform" else jitter,
                         "mask_match": match})
    return pd.DataFrame(rows, columns=[*PLAN_COLUMNS, "mask_match"])


def _prompt_of(row) -> str:
    """A real row's own prompt; built from its fields where the table has none (e.g. a bare attributes table)."""
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    fields = make_attributes(row["sex"], row["age"], row["bmi"], row["health"], where=f"donor {row['subject_id']}")
    return prompt_from_fields(**fields.to_dict())


def inverse_frequency_weights(prompts: list[str]) -> np.ndarray:
    """(N,) draw probabilities proportional to 1 / (count of the row's prompt): each of the P distinct prompts
    gets total probability 1 / P, shared equally by its rows."""
    if not len(prompts):
        raise InputError("attributes", "no real rows to draw copies from")
    series = pd.Series(list(prompts), dtype=object)
    weights = 1.0 / series.map(series.value_counts()).to_numpy(dtype=np.float64)
    return weights / weights.sum()


def plan_copies(attributes: pd.DataFrame, target: PlanTarget, seed: int = 0) -> pd.DataFrame:
    """Mode copies: target.copies rows drawn by inverse prompt frequency (with replacement), each a copy of its
    donor row: the donor's fields, prompt and mask (jitter 0), a fresh seed."""
    pool = attributes.reset_index(drop=True)
    if target.conditions is not None:
        pool = pool[pool["health"].isin(target.conditions)].reset_index(drop=True)
    records = pool.to_dict("records")
    prompts = [_prompt_of(r) for r in records]
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(records), size=target.copies, replace=True, p=inverse_frequency_weights(prompts))
    rows = []
    for pos in drawn:
        donor = records[int(pos)]
        fields = make_attributes(donor["sex"], donor["age"], donor["bmi"], donor["health"],
                                 where=f"donor {donor['subject_id']}")
        rows.append({"sample_id": f"syn-{len(rows):06d}", **fields.to_dict(), "prompt": prompts[int(pos)],
                     "mask_subject_id": str(donor["subject_id"]), "mask_row": int(donor["slice_row"]),
                     "seed": int(rng.integers(MAX_SEED)), "jitter": 0, "mask_match": "self"})
    return pd.DataFrame(rows, columns=[*PLAN_COLUMNS, "mask_match"])


def composition_after(attributes: pd.DataFrame, plan: pd.DataFrame,
                      keys: tuple = ("health", "sex", "age_group", "bmi_group")) -> pd.DataFrame:
    """Cohort before/after per non-empty cell: key values, real, synthetic, total, and health share in the
    (non-health keys) cell after rebalancing."""
    real = cell_keys(attributes, keys).fillna("unknown").assign(real=1, synthetic=0)
    syn = cell_keys(plan, keys).fillna("unknown").assign(real=0, synthetic=1)
    table = pd.concat([real, syn]).groupby(list(keys), sort=False)[["real", "synthetic"]].sum().reset_index()
    rank = [tuple(list(KEY_VALUES[k]).index(v) if v in KEY_VALUES[k] else len(KEY_VALUES[k]) for k, v in zip(keys, cell))
            for cell in table[list(keys)].itertuples(index=False, name=None)]
    table = table.iloc[sorted(range(len(table)), key=rank.__getitem__)].reset_index(drop=True)  # vocabulary order
    table["total"] = table["real"] + table["synthetic"]
    others = [k for k in keys if k != "health"]
    group_total = table.groupby(others)["total"].transform("sum") if others else table["total"].sum()
    table["health_share"] = table["total"] / group_total
    return table


def apply_jitter(mask: np.ndarray, rng: np.random.Generator, max_shift: float = 2.0,
                 max_degrees: float = 5.0, max_scale: float = 0.0) -> np.ndarray:
    """mask: (2, S, S) labels -> same shape, shifted (<= max_shift px), rotated (<= max_degrees) and scaled
    isotropically (by 1 +- max_scale) about the centre, nearest neighbour; ED and ES move together so the cardiac
    cycle stays coherent."""
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    shift = rng.uniform(-max_shift, max_shift, size=2)
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale) if max_scale else 1.0
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = (np.array(mask.shape[1:]) - 1) / 2.0
    offset = centre - rotation @ (centre + shift)  # output pixel o reads input R (o - c - shift) + c
    return np.stack([ndimage.affine_transform(m, rotation, offset=offset, order=0, mode="constant", cval=0)
                     for m in mask]).astype(mask.dtype)


def deform_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "deform" donor strategy's geometry-preserving deformation (jitter 2): rotation <= 20 degrees, shift <= 3
    px, isotropic scale 0.93-1.07, identical on ED and ES (mask: (2, S, S))."""
    return apply_jitter(mask, rng, max_shift=3.0, max_degrees=20.0, max_scale=0.07)


def jittered(mask: np.ndarray, jitter: int, seed: int) -> np.ndarray:
    """A plan row's control mask: as drawn (0), jittered (1) or deformed (2), seeded by the row's seed."""
    if not jitter:
        return mask
    rng = np.random.default_rng(int(seed))
    return apply_jitter(mask, rng) if int(jitter) == 1 else deform_mask(mask, rng)
