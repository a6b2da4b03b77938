"""Patient metadata <-> text prompt, in the method's form "Female, age in 40s, normal BMI, heart failure".

The prompt carries bins only (decade, WHO BMI category), so parsing gives a ParsedPrompt, not Attributes.
Missing fields are left out; an all-missing patient gives "" (the unconditional prompt). A slice's position in
the LV ("basal slice", "mid slice", "apical slice") may close the prompt: it belongs to the slice, not the patient.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from data.attributes import (AGE_RANGE, BMI_CATEGORIES, HEALTH_CONDITIONS, SEXES, Attributes, age_decade,
                             bmi_category, make_attributes)
from data.errors import InputError

SLICE_POSITIONS = ("basal", "mid", "apical")  # thirds of the LV-bearing slices, base to apex
_AGE_PATTERN = re.compile(r"^age in (\d+)s$")
_DECADES = tuple(range(int(AGE_RANGE[0]), int(AGE_RANGE[1]) + 1, 10))


@dataclass(frozen=True)
class ParsedPrompt:
    """What a prompt says: the bins of each field, None where the prompt leaves the field out."""

    sex: Optional[str] = None
    age_decade: Optional[int] = None
    bmi_category: Optional[str] = None
    health: Optional[str] = None
    position: Optional[str] = None  # slice position in the LV, one of SLICE_POSITIONS


def _compose(sex: Optional[str], decade: Optional[int], bmi_cat: Optional[str], health: Optional[str],
             position: Optional[str] = None) -> str:
    parts = []
    if sex is not None:
        parts.append(sex.capitalize())
    if decade is not None:
        parts.append(f"age in {decade}s")
    if bmi_cat is not None:
        parts.append(f"{bmi_cat} BMI")
    if health is not None:
        parts.append(health.replace("_", " "))
    if position is not None:
        parts.append(f"{check_position(position)} slice")
    return ", ".join(parts)


def check_position(position: str, where: str = "slice position") -> str:
    """'Basal' -> 'basal'; InputError unless one of SLICE_POSITIONS."""
    key = str(position).strip().lower()
    if key not in SLICE_POSITIONS:
        raise InputError(where, f"unknown slice position {position!r}; expected one of {', '.join(SLICE_POSITIONS)}")
    return key


def attributes_to_prompt(attrs: Attributes, position: Optional[str] = None) -> str:
    """Attributes (+ slice position) -> "Female, age in 40s, normal BMI, heart failure[, mid slice]"."""
    return _compose(attrs.sex, age_decade(attrs.age), bmi_category(attrs.bmi), attrs.health, position)


def parsed_to_prompt(parsed: ParsedPrompt) -> str:
    """ParsedPrompt -> its canonical prompt (inverse of prompt_to_attributes on canonical prompts)."""
    return _compose(parsed.sex, parsed.age_decade, parsed.bmi_category, parsed.health, parsed.position)


def prompt_from_fields(sex=None, age=None, bmi=None, health=None, position=None) -> str:
    """Raw fields (e.g. from a CLI) -> prompt; fields are validated by make_attributes (position: SLICE_POSITIONS)."""
    attrs = make_attributes(sex=sex, age=age, bmi=bmi, health=health, where="prompt fields")
    return attributes_to_prompt(attrs, None if position is None else check_position(position, "prompt fields: position"))


def _vocabulary() -> str:
    conditions = ", ".join(h.replace("_", " ") for h in HEALTH_CONDITIONS)
    return (f"sex one of {'/'.join(SEXES)}; 'age in <decade>s' with decade in {_DECADES[0]}..{_DECADES[-1]}; "
            f"'<category> BMI' with category one of {'/'.join(BMI_CATEGORIES)}; condition one of {conditions}; "
            f"'<position> slice' with position one of {'/'.join(SLICE_POSITIONS)}")


def _parse_part(part: str) -> tuple[str, object]:
    """One comma-separated part -> (field name, value); InputError naming the part when unknown."""
    key = " ".join(part.lower().split())
    if key in SEXES:
        return "sex", key
    age = _AGE_PATTERN.match(key)
    if age is not None:
        decade = int(age.group(1))
        if decade not in _DECADES:
            raise InputError("prompt", f"age part {part!r} is not a decade in {_DECADES[0]}..{_DECADES[-1]}")
        return "age_decade", decade
    if key.endswith(" bmi") and key[: -len(" bmi")] in BMI_CATEGORIES:
        return "bmi_category", key[: -len(" bmi")]
    if key.endswith(" slice") and key[: -len(" slice")] in SLICE_POSITIONS:
        return "position", key[: -len(" slice")]
    condition = key.replace(" ", "_").replace("-", "_")
    if condition in HEALTH_CONDITIONS:
        return "health", condition
    raise InputError("prompt", f"unknown part {part!r}; expected {_vocabulary()}")


def prompt_to_attributes(prompt: str) -> ParsedPrompt:
    """Prompt -> ParsedPrompt. Case-insensitive, any part order; unknown or repeated parts raise InputError."""
    if not isinstance(prompt, str):
        raise InputError("prompt", f"expected a string, got {type(prompt).__name__}")
    if prompt.strip() == "":
        return ParsedPrompt()
    fields: dict[str, object] = {}
    for part in prompt.split(","):
        if part.strip() == "":
            raise InputError("prompt", f"empty part in {prompt!r}; parts are separated by single commas")
        name, value = _parse_part(part.strip())
        if name in fields:
            raise InputError("prompt", f"{name} given twice in {prompt!r}")
        fields[name] = value
    return ParsedPrompt(**fields)


def canonical_prompt(prompt: str) -> str:
    """The one spelling of what a prompt says ("heart-failure, age in ٤٠s, female" -> "Female, age in 40s,
    heart failure"): what the model and the sidecars get, so text that validates as a bin conditions as that bin
    (the tokenizer would make <unk> or an unseen sequence of anything else). InputError as prompt_to_attributes."""
    parsed = prompt_to_attributes(prompt)
    canonical = parsed_to_prompt(parsed)
    if prompt_to_attributes(canonical) != parsed:  # a part the composer does not write would be lost: never silently
        raise InputError("prompt", f"{prompt!r} cannot be written canonically (got {canonical!r})")
    return canonical
