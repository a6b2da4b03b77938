"""UK Biobank layout (as ukbb_cardiac writes it): one folder per eid plus a metadata CSV.

    root/<eid>/sa_ED.nii.gz, sa_ES.nii.gz, seg_sa_ED.nii.gz, seg_sa_ES.nii.gz
    root/metadata.csv: eid, sex, age, bmi (or height in cm + weight in kg), health
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from data.attributes import Attributes, bmi_from_height_weight, make_attributes
from data.cohort import BACKGROUND, LV, MYO, RV, Subject
from data.errors import InputError, check_regular_file, check_unique_columns
from data.nifti import load_subject

NAME = "ukbb"
LABEL_MAP = {0: BACKGROUND, 1: LV, 2: MYO, 3: RV}  # ukbb_cardiac already uses the internal convention
IMAGE_ED, IMAGE_ES, MASK_ED, MASK_ES = "sa_ED.nii.gz", "sa_ES.nii.gz", "seg_sa_ED.nii.gz", "seg_sa_ES.nii.gz"
DEFAULT_METADATA = "metadata.csv"
DESCRIPTION = (f"ukbb: <eid>/{IMAGE_ED}, <eid>/{IMAGE_ES}, <eid>/{MASK_ED}, <eid>/{MASK_ES} (labels 1 LV, 2 MYO, 3 RV) "
               f"and {DEFAULT_METADATA} with columns eid, sex, age, bmi (or height + weight), health")
OPTIONAL_COLUMNS = ("sex", "age", "bmi", "height", "weight", "health")


def looks_like(root: Path) -> bool:
    return any(any(root.glob(f"*/{name}")) for name in (IMAGE_ED, IMAGE_ES, MASK_ED, MASK_ES))


def read_metadata(csv_path: str | Path) -> pd.DataFrame:
    """Read and structurally check the CSV -> DataFrame of strings indexed by eid (lower-case column names)."""
    csv_path = Path(csv_path)
    check_regular_file(csv_path, "a metadata CSV", missing="metadata CSV not found; expected columns eid, sex, age, bmi "
                                                           "(or height + weight), health")
    try:
        table = pd.read_csv(csv_path, dtype=str, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(csv_path, f"cannot parse CSV ({type(err).__name__}: {err})") from None
    check_unique_columns(csv_path, fold_case=True)  # column names are matched lower-case below
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "eid" not in table.columns:
        raise InputError(csv_path, f"missing required column 'eid'; found columns {list(table.columns)}")
    if ("height" in table.columns) != ("weight" in table.columns) and "bmi" not in table.columns:
        raise InputError(csv_path, "BMI needs both 'height' (cm) and 'weight' (kg) columns, or a 'bmi' column")
    eids = table["eid"].fillna("").str.strip()
    if (eids == "").any():
        first_row = int((eids == "").to_numpy().argmax()) + 2  # +1 header, +1 one-based
        raise InputError(f"{csv_path}: line {first_row}: eid", "empty eid; every row needs a subject id")
    # An eid names the subject's folder under root: '../x' or '/abs' would read another cohort's files.
    unsafe = sorted(e for e in eids if "/" in e or "\\" in e or e.strip(".") == "")
    if unsafe:
        raise InputError(f"{csv_path}: eid", f"eid(s) {unsafe[:3]} are not folder names; "
                                             "expected plain ids such as 1000001")
    duplicated = sorted(set(eids[eids.duplicated()]))
    if duplicated:
        raise InputError(f"{csv_path}: eid", f"duplicate eid(s) {duplicated}; each subject must appear once")
    table["eid"] = eids
    return table.set_index("eid", drop=False)


def row_attributes(row: pd.Series, where: str) -> Attributes:
    """One CSV row -> validated Attributes; errors name `where` (file and eid) and the field."""
    def field(name: str) -> Optional[str]:
        return row.get(name)

    bmi = field("bmi")
    if bmi is None or pd.isna(bmi):
        bmi = bmi_from_height_weight(field("height"), field("weight"), where)
    return make_attributes(sex=field("sex"), age=field("age"), bmi=bmi, health=field("health"), where=where)


def _subject_folders(root: Path) -> dict[str, Path]:
    """Sub-folders holding NIfTI files; other folders (plots, caches) are not subjects."""
    return {p.name: p for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (any(p.glob("*.nii.gz")) or any(p.glob("*.nii")))}


def _load_one(eid: str, folder: Path, table: pd.DataFrame, csv_path: Path) -> Subject:
    if eid not in table.index:
        raise InputError(folder, f"subject folder has no row in {csv_path}")
    if not folder.is_dir():
        raise InputError(f"{csv_path}: eid {eid}", f"no subject folder {folder}")
    attributes = row_attributes(table.loc[eid], f"{csv_path} (eid {eid})")
    return load_subject(eid, folder / IMAGE_ED, folder / IMAGE_ES, folder / MASK_ED, folder / MASK_ES,
                        LABEL_MAP, attributes, source=folder)


def read_ukbb(root: str | Path, metadata: str | Path | None = None,
              skip_bad: bool = False) -> tuple[list[Subject], list[tuple[str, str]]]:
    """Read every subject -> (subjects sorted by eid, skipped (eid, reason)); skip_bad=False raises on the first bad one."""
    root = Path(root)
    csv_path = Path(metadata) if metadata is not None else root / DEFAULT_METADATA
    table = read_metadata(csv_path)
    folders = _subject_folders(root)
    subjects, skipped = [], []
    for eid in sorted(set(folders) | set(table.index)):
        try:
            subjects.append(_load_one(eid, folders.get(eid, root / eid), table, csv_path))
        except InputError as err:
            if not skip_bad:
                raise
            skipped.append((eid, str(err)))
    return subjects, skipped
