"""Read a cohort from disk, whatever its layout, into Subjects with internal labels.

Each on-disk layout has one adapter module (data/ukbb.py, data/acdc.py) that knows its file names, its
metadata and its declared label map; this module picks the adapter and collects the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import pandas as pd

from data import acdc, ukbb
from data.cohort import Subject
from data.errors import InputError

LAYOUTS = {ukbb.NAME: ukbb, acdc.NAME: acdc}


@dataclass
class Cohort:
    """Subjects read from `root`; `skipped` lists (subject id, reason) for every subject left out."""

    subjects: list[Subject]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = ""
    root: Path = Path(".")


def _known_layouts() -> str:
    return "; ".join(module.DESCRIPTION for module in LAYOUTS.values())


def detect_layout(root: str | Path) -> str:
    """Name of the one layout whose files are present under root."""
    root = Path(root)
    found = [name for name, module in LAYOUTS.items() if module.looks_like(root)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(root, f"no known cohort layout found. Known layouts: {_known_layouts()}")
    raise InputError(root, f"files of several layouts found ({', '.join(found)}); pass layout= one of them")


def read_cohort(root: str | Path, layout: str = "auto", metadata: str | Path | None = None,
                skip_bad: bool = False) -> Cohort:
    """Read every subject under root. skip_bad=True leaves bad subjects out and lists them in Cohort.skipped;
    skip_bad=False raises InputError on the first bad one. `metadata` is the CSV path (ukbb only)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "cohort folder not found" if not root.exists() else "expected a folder, got a file")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == ukbb.NAME:
        subjects, skipped = ukbb.read_ukbb(root, metadata, skip_bad)
    elif layout == acdc.NAME:
        if metadata is not None:
            raise InputError(metadata, "the acdc layout reads metadata from each patient's Info.cfg; pass no metadata")
        subjects, skipped = acdc.read_acdc(root, skip_bad)
    else:
        raise InputError("layout", f"unknown layout {layout!r}; expected 'auto' or one of: {_known_layouts()}")
    if not subjects:
        reasons = "; ".join(f"{sid}: {why}" for sid, why in skipped[:3]) or "no subject folders"
        raise InputError(root, f"no readable subject in the {layout} layout ({len(skipped)} skipped: {reasons})")
    return Cohort(subjects=subjects, skipped=skipped, layout=layout, root=root)


def attributes_table(cohort: Cohort) -> pd.DataFrame:
    """One row per subject: subject_id, sex, age, bmi, health (None where the cohort lacks the field)."""
    rows = [{"subject_id": s.subject_id, **s.attributes.to_dict()} for s in cohort.subjects]
    return pd.DataFrame(rows, columns=["subject_id", "sex", "age", "bmi", "health"])

