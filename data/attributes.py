"""Patient attributes (sex, age, BMI, health condition): vocabulary, validation and bins.

Every part of the project (prompts, subgroups, synthetic cohort, planner, evaluation) uses these
definitions, so a bin or a condition name is spelled in exactly one place.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from data.errors import InputError

SEXES = ("female", "male")
# Method's condition order; ACDC groups add the cardiomyopathies. "healthy" is the absence of disease.
HEALTH_CONDITIONS = (
    "healthy",
    "heart_failure",
    "myocardial_infarction",
    "ischemic_heart_disease",
    "atrial_fibrillation",
    "dilated_cardiomyopathy",
    "hypertrophic_cardiomyopathy",
    "abnormal_right_ventricle",
)
BMI_CATEGORIES = ("underweight", "normal", "overweight", "obese")
AGE_RANGE = (0.0, 120.0)
BMI_RANGE = (10.0, 80.0)

_SEX_ALIASES = {"f": "female", "female": "female", "woman": "female", "0": "female",
                "m": "male", "male": "male", "man": "male", "1": "male"}


@dataclass(frozen=True)
class Attributes:
    """Metadata of one patient; None means the cohort does not carry that field."""

    sex: Optional[str] = None
    age: Optional[float] = None
    bmi: Optional[float] = None
    health: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and value.strip() == "")


def normalise_sex(value, where: str = "sex") -> Optional[str]:
    """'F'/'female'/0 -> 'female' (UK Biobank codes 0 female, 1 male)."""
    if _missing(value):
        return None
    key = str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value).strip().lower()
    if key not in _SEX_ALIASES:
        raise InputError(where, f"unknown sex {value!r}; expected one of female/male (or F/M, 0/1)")
    return _SEX_ALIASES[key]


def normalise_health(value, where: str = "health") -> Optional[str]:
    """'Heart failure' / 'heart-failure' -> 'heart_failure'; must be in HEALTH_CONDITIONS."""
    if _missing(value):
        return None
    key = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in HEALTH_CONDITIONS:
        raise InputError(where, f"unknown health condition {value!r}; expected one of {', '.join(HEALTH_CONDITIONS)}")
    return key


def _checked_number(value, lo: float, hi: float, where: str) -> Optional[float]:
    if _missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"expected a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InputError(where, f"impossible value {value!r}; expected a number in [{lo:g}, {hi:g}]")
    return number


def make_attributes(sex=None, age=None, bmi=None, health=None, where: str = "metadata") -> Attributes:
    """Validate raw fields (strings, numbers or None) into Attributes; errors name `where` and the field."""
    return Attributes(
        sex=normalise_sex(sex, f"{where}: sex"),
        age=_checked_number(age, *AGE_RANGE, f"{where}: age"),
        bmi=_checked_number(bmi, *BMI_RANGE, f"{where}: bmi"),
        health=normalise_health(health, f"{where}: health"),
    )


def bmi_from_height_weight(height_cm, weight_kg, where: str = "metadata") -> Optional[float]:
    """BMI = weight / height^2 with height in cm; None when either is missing."""
    if _missing(height_cm) or _missing(weight_kg):
        return None
    height = _checked_number(height_cm, 50.0, 250.0, f"{where}: height")
    weight = _checked_number(weight_kg, 2.0, 400.0, f"{where}: weight")
    return weight / (height / 100.0) ** 2


def bmi_category(bmi: Optional[float]) -> Optional[str]:
    """WHO categories: <18.5 underweight, <25 normal, <30 overweight, else obese."""
    if bmi is None:
        return None
    if bmi < 18.5:
        return "underweight"
    if bmi < 25.0:
        return "normal"
    if bmi < 30.0:
        return "overweight"
    return "obese"


def age_decade(age: Optional[float]) -> Optional[int]:
    """Decade of age as in the prompt: 47 -> 40 ("age in 40s")."""
    return None if age is None else int(age // 10) * 10


def age_group(age: Optional[float]) -> Optional[str]:
    """Coarse age group for fairness subgroups (the method uses tertiles; fixed cuts keep runs comparable)."""
    if age is None:
        return None
    if age < 55:
        return "<55"
    if age < 65:
        return "55-64"
    return "65+"


def bmi_group(bmi: Optional[float]) -> Optional[str]:
    """Fairness BMI groups as in the method: <25, 25-30, >30."""
    if bmi is None:
        return None
    return "<25" if bmi < 25 else ("25-30" if bmi < 30 else ">30")


def is_positive(health: Optional[str], positive: tuple[str, ...] = ("heart_failure",)) -> bool:
    """Downstream label: the method's heart failure vs everything else; ACDC runs pass e.g. DCM + MINF."""
    return health in positive
