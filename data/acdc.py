"""ACDC layout: one folder per patient with Info.cfg and the ED/ES frames with their masks.

    root/patientNNN/Info.cfg                       ED: 1, ES: 12, Group: DCM, Height: 184.0, Weight: 95.0, [NbFrame: 30]
    root/patientNNN/patientNNN_frameXX.nii.gz      XX = zero-padded ED and ES frame numbers
    root/patientNNN/patientNNN_frameXX_gt.nii.gz   labels 1 RV, 2 MYO, 3 LV blood pool
ACDC has no sex or age; BMI = Weight / Height^2 (both required: the prompt carries the BMI category).
A user's copy as the challenge distributes it (root/training/patientNNN, root/testing/patientNNN) reads as one
cohort: patient numbers are unique across the two folders.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from data.attributes import bmi_from_height_weight, make_attributes
from data.cohort import BACKGROUND, LV, MYO, RV, Subject
from data.errors import InputError
from data.nifti import load_subject

NAME = "acdc"
LABEL_MAP = {0: BACKGROUND, 1: RV, 2: MYO, 3: LV}
ORIENTATION = "LPS"  # every ACDC volume is stored so (sform diag(-1, -1, 1)): they load exactly as stored
GROUP_TO_HEALTH = {
    "DCM": "dilated_cardiomyopathy",
    "HCM": "hypertrophic_cardiomyopathy",
    "MINF": "myocardial_infarction",
    "NOR": "healthy",
    "RV": "abnormal_right_ventricle",
}
DESCRIPTION = ("acdc: [training/, testing/] patientNNN/Info.cfg (ED, ES, Group, Height, Weight; optional NbFrame), "
               "patientNNN/patientNNN_frameXX.nii.gz and patientNNN/patientNNN_frameXX_gt.nii.gz "
               "for XX = the ED and ES frames (labels 1 RV, 2 MYO, 3 LV)")
PATIENT_FOLDER = re.compile(r"patient\d+")
SUBSETS = ("training", "testing")  # the challenge's own split folders, read together when present


def looks_like(root: Path) -> bool:
    return any(root.glob("patient*/Info.cfg")) or any(any((root / sub).glob("patient*/Info.cfg")) for sub in SUBSETS)


def read_info(path: str | Path) -> dict[str, str]:
    """Parse Info.cfg 'Key: value' lines -> {key: value}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "Info.cfg not found; expected lines 'ED: <frame>', 'ES: <frame>', 'Group: <DCM|HCM|MINF|NOR|RV>'")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # utf-8-sig: a BOM is not part of the first key
    except UnicodeDecodeError:
        raise InputError(path, "not a text file; expected 'Key: value' lines") from None
    info = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise InputError(f"{path}: line {number}", f"expected 'Key: value', got {line!r}")
        info[key.strip()] = value.strip()
    return info


def _frame(info: dict[str, str], key: str, path: Path) -> int:
    if key not in info:
        raise InputError(f"{path}: {key}", f"missing field {key}; expected e.g. '{key}: 1'")
    try:
        frame = int(info[key])
    except ValueError:
        raise InputError(f"{path}: {key}", f"expected a frame number, got {info[key]!r}") from None
    frames = info.get("NbFrame")
    if frame < 1 or (frames is not None and frames.isdigit() and frame > int(frames)):
        raise InputError(f"{path}: {key}", f"frame {frame} outside 1..{frames or 'NbFrame'}")
    return frame


def _body_size(info: dict[str, str], path: Path) -> tuple[str, str]:
    """Height (cm) and Weight (kg) strings; InputError naming the file when either is missing."""
    for key, example in (("Height", "172.0' (cm)"), ("Weight", "70.0' (kg)")):
        if key not in info or not info[key].strip():
            raise InputError(f"{path}: {key}", f"missing field {key}; expected e.g. '{key}: {example} for the BMI")
    return info["Height"], info["Weight"]


def _health(info: dict[str, str], path: Path) -> str:
    group = info.get("Group")
    if group not in GROUP_TO_HEALTH:
        raise InputError(f"{path}: Group", f"unknown group {group!r}; expected one of {', '.join(GROUP_TO_HEALTH)}")
    return GROUP_TO_HEALTH[group]


def load_patient(folder: Path) -> Subject:
    """One patient folder -> Subject with internal labels, health from Group, BMI from Height/Weight."""
    name = folder.name
    info_path = folder / "Info.cfg"
    info = read_info(info_path)
    ed, es = _frame(info, "ED", info_path), _frame(info, "ES", info_path)
    where, health = str(info_path), _health(info, info_path)
    bmi: Optional[float] = bmi_from_height_weight(*_body_size(info, info_path), where)
    attributes = make_attributes(bmi=bmi, health=health, where=where)
    image_ed, image_es = folder / f"{name}_frame{ed:02d}.nii.gz", folder / f"{name}_frame{es:02d}.nii.gz"
    mask_ed, mask_es = folder / f"{name}_frame{ed:02d}_gt.nii.gz", folder / f"{name}_frame{es:02d}_gt.nii.gz"
    return load_subject(name, image_ed, image_es, mask_ed, mask_es, LABEL_MAP, attributes, source=folder,
                        orientation=ORIENTATION)


def read_acdc(root: str | Path, skip_bad: bool = False) -> tuple[list[Subject], list[tuple[str, str]]]:
    """Read every patientNNN folder (in root, or in root/training and root/testing) -> (subjects sorted by name,
    skipped (name, reason))."""
    parents = [Path(root)] + [Path(root) / sub for sub in SUBSETS if (Path(root) / sub).is_dir()]
    folders = sorted((p for parent in parents for p in parent.iterdir() if p.is_dir() and PATIENT_FOLDER.fullmatch(p.name)),
                     key=lambda p: p.name)
    names = [p.name for p in folders]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(root, f"patient folder(s) {', '.join(repeated[:3])} found twice (in root and/or "
                               f"{' and '.join(SUBSETS)}); keep one copy")
    subjects, skipped = [], []
    for folder in folders:
        try:
            subjects.append(load_patient(folder))
        except InputError as err:
            if not skip_bad:
                raise
            skipped.append((folder.name, str(err)))
    return subjects, skipped
