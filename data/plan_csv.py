"""The plan CSV on disk: atomic save, and a load that checks every row (sample id, fields against prompt, integers)."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Optional

import pandas as pd

from data.attributes import make_attributes
from data.atomic import atomic_write_bytes
from data.errors import InputError, check_regular_file, check_unique_columns
from data.planner import JITTER_KINDS, MAX_SEED, PLAN_COLUMNS
from data.prompts import prompt_from_fields, prompt_to_attributes

SAMPLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Names the sample writer derives (run/samples.py): <id>_mask.nii.gz is a sample's mask, grid.png the call's grid.
RESERVED_SUFFIX, RESERVED_IDS = "_mask", ("grid",)


def save_plan(plan: pd.DataFrame, path: str | Path) -> Path:
    """Write the plan CSV atomically."""
    buffer = io.StringIO()
    plan.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return Path(path)


def sample_id_problem(ids: list[str]) -> Optional[tuple[int, str]]:
    """The first sample id that cannot be a file name of its own -> (index, what was expected), else None: not a
    plain name, a name the writer derives for another file, or the same as an earlier id up to case (one file on a
    case-insensitive file system)."""
    seen: dict[str, str] = {}
    for i, sid in enumerate(ids):
        key = str(sid).lower()
        if not SAMPLE_ID.fullmatch(str(sid)) or len(str(sid)) > 100:
            return i, "expected letters, digits, '.', '_' or '-' (not starting with '.'), at most 100 characters"
        if key.endswith(RESERVED_SUFFIX) or key in RESERVED_IDS:
            return i, (f"'{sid}' is reserved (<id>{RESERVED_SUFFIX}.nii.gz names a sample's mask, grid.png the "
                       f"call's grid); expected an id not ending in '{RESERVED_SUFFIX}' and not 'grid'")
        if key in seen:
            same = "duplicate sample id" if seen[key] == sid else f"same file name as sample {seen[key]!r} up to case"
            return i, f"{same}; expected ids unique regardless of case"
        seen[key] = sid
    return None


PROMPT_FIELDS = {"sex": "sex", "age": "age_decade", "bmi": "bmi_category", "health": "health"}  # column -> prompt bin


def prompt_disagreement(fields: dict, prompt: str) -> Optional[str]:
    """What a plan row's prompt says differently from its fields (the image is made from the prompt, the row's
    fields label it), else None: each of sex, age decade, BMI category and condition is in both or in neither,
    with the same bin."""
    said, labelled = prompt_to_attributes(prompt), prompt_to_attributes(prompt_from_fields(**fields))
    for column, part in PROMPT_FIELDS.items():
        if getattr(said, part) != getattr(labelled, part):
            in_prompt, in_row = ("nothing" if v is None else repr(v) for v in (getattr(said, part), getattr(labelled, part)))
            value = f" ({fields[column]!r})" if column in ("age", "bmi") and fields.get(column) is not None else ""
            return (f"the prompt says {part.replace('_', ' ')} {in_prompt} but the {column} column gives {in_row}"
                    f"{value}; expected a prompt stating what the row's fields say")
    return None


def _plan_error(path: Path, line: int, sample_id, field: str, problem: str) -> InputError:
    return InputError(f"{path}: line {line} (sample {sample_id}): {field}", problem)


def _check_int(value, path: Path, line: int, sid, field: str, lo: int, hi: int) -> int:
    try:
        number = float(value)
        if number != int(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise _plan_error(path, line, sid, field, f"expected an integer, got {value!r}") from None
    if not lo <= number <= hi:
        raise _plan_error(path, line, sid, field, f"expected an integer in [{lo}, {hi}], got {value!r}")
    return int(number)


def load_plan(path: str | Path) -> pd.DataFrame:
    """Read and validate a plan CSV; errors name the line, sample and field. mask_row may be empty where a
    mask_path column gives the mask file instead."""
    path = Path(path)
    check_regular_file(path, "a plan CSV", missing="plan file not found")
    try:
        plan = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse CSV ({type(err).__name__}: {err})") from None
    check_unique_columns(path)
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a plan needs {', '.join(PLAN_COLUMNS)}")
    bad_id = sample_id_problem(list(plan["sample_id"]))
    if bad_id is not None:
        raise _plan_error(path, bad_id[0] + 2, plan["sample_id"][bad_id[0]], "sample_id", bad_id[1])
    rows = []
    for i, row in enumerate(plan.to_dict("records")):
        line, sid = i + 2, row["sample_id"]
        try:
            fields = make_attributes(row["sex"], row["age"], row["bmi"], row["health"], where=f"{path}: line {line}")
            disagree = prompt_disagreement(fields.to_dict(), row["prompt"])
        except InputError as err:
            raise _plan_error(path, line, sid, err.where.split(": ")[-1], err.problem) from None
        if disagree is not None:
            raise _plan_error(path, line, sid, "prompt", disagree)
        has_path = bool(row.get("mask_path", "").strip())
        mask_row = None if has_path and row["mask_row"].strip() == "" else \
            _check_int(row["mask_row"], path, line, sid, "mask_row", 0, 2**62)
        rows.append({**row, **fields.to_dict(), "mask_row": mask_row,
                     "seed": _check_int(row["seed"], path, line, sid, "seed", 0, MAX_SEED),
                     "jitter": _check_int(row["jitter"], path, line, sid, "jitter", 0, JITTER_KINDS - 1)})
    table = pd.DataFrame(rows, columns=list(plan.columns))
    table["mask_row"] = pd.Series([r["mask_row"] for r in rows], dtype=object)  # ints, None where mask_path
    return table
