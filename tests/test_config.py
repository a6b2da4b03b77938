from dataclasses import dataclass, field
from typing import Optional

import pytest
from hypothesis import given, settings, strategies as st

from data.errors import InputError
from run.loader import apply_override, from_dict, load_config, to_dict


@dataclass
class Inner:
    lr: float = 1e-4
    sizes: tuple[int, ...] = (1, 2)
    name: Optional[str] = None


@dataclass
class Outer:
    steps: int = 10
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    optional: Optional[Inner] = None


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  sizes: [3, 4, 5]\n")
    cfg = load_config(Outer, path, ["inner.lr=0.5", "flag=true"])
    assert cfg.steps == 5 and cfg.flag is True
    assert cfg.inner.sizes == (3, 4, 5) and cfg.inner.lr == 0.5 and cfg.inner.name is None
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, field_name", [
    ("stpes=3", "stpes"), ("inner.lrr=1", "lrr"), ("steps=abc", "steps"), ("flag=3", "flag"),
    ("inner.sizes=[1, x]", "sizes"), ("steps=1.5", "steps"),
])
def test_bad_keys_and_types_name_the_field(override, field_name):
    with pytest.raises(InputError, match=field_name):
        load_config(Outer, None, [override])


def test_optional_section_is_none_or_checked_like_a_section():
    assert load_config(Outer, None, []).optional is None
    assert load_config(Outer, None, ["optional={lr: 0.5}"]).optional == Inner(lr=0.5)
    with pytest.raises(InputError, match=r"config.optional.lrr: unknown key"):
        load_config(Outer, None, ["optional={lrr: 0.5}"])
    with pytest.raises(InputError, match=r"config.optional.lr: expected a finite number"):
        load_config(Outer, None, ["optional.lr=abc"])


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("steps: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(InputError, match="evil.yaml"):
        load_config(Outer, path)


def test_missing_file_and_bad_override():
    with pytest.raises(InputError, match="not found"):
        load_config(Outer, "/nonexistent/x.yaml")
    with pytest.raises(InputError, match="KEY=VALUE"):
        apply_override({}, "steps")


_scalars = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=5), st.none())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["steps", "flag", "inner", "bogus"]),
                       st.one_of(_scalars, st.dictionaries(st.sampled_from(["lr", "sizes", "name", "x"]), _scalars))))
def test_loader_fuzz_gives_config_or_input_error(data):
    # Whatever the user writes, the loader either returns a typed config or one InputError.
    try:
        cfg = from_dict(Outer, data)
    except InputError:
        return
    assert isinstance(cfg.steps, int) and isinstance(cfg.flag, bool) and isinstance(cfg.inner.lr, float)
