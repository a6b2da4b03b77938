"""One converter from nested results (numpy, pandas, NaN) to values json.dumps(allow_nan=False) accepts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


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
