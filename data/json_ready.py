"""One converter from nested results (numpy, pandas, NaN) to values json.dumps(allow_nan=False) accepts, and one
reader of the JSON files a run writes (a damaged one is one clear line, not a traceback)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import InputError


def json_ready(value):
    """dicts/lists/arrays recursively; DataFrames -> row dicts; numpy scalars -> Python; NaN, inf, NA -> None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return json_ready(value.to_dict("records"))
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json_object(path: str | Path, what: str) -> dict:
    """The JSON object in `path` -> dict; InputError naming the file when it is unreadable, cut short or not an
    object (e.g. edited by hand, or written by a process killed before this project wrote files atomically)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(path, f"unreadable {what} ({type(error).__name__}: {str(error)[:80]}); expected the JSON "
                               "object train.py writes: delete it or rerun the stage with --force") from None
    if not isinstance(value, dict):
        raise InputError(path, f"{what} is a JSON {type(value).__name__}; expected an object")
    return value
