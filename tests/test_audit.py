"""The training-set audit's real reference pool (run/downstream.py:fid_reference) and `python -m run.audit`."""
from __future__ import annotations

from pathlib import Path

import pytest

import run.downstream as downstream
import run.prepare_data as prepare_data
from data.errors import InputError
from run.audit import main
from run.config import load_run_config
from run.prepare_data import PreparedData

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


@pytest.mark.parametrize("overrides, fresh", [
    (["fresh_test.n=8"], True),  # auto: the fresh cohort when one is configured
    ([], False),  # auto without one: the held-out test set
    (["fresh_test.n=8", "evaluation.training_set.fid_reference=test"], False),
    (["fresh_test.n=8", "evaluation.training_set.fid_reference=fresh"], True),
])
def test_the_pool_is_the_fresh_cohort_when_one_is_configured(monkeypatch, overrides, fresh):
    drawn = []
    monkeypatch.setattr(downstream, "fresh_test_set",
                        lambda data, cfg, run_dir, progress=True: drawn.append(cfg.n) or "fresh slices")
    cfg = load_run_config(SMOKE, overrides)
    pool, name = downstream.fid_reference(cfg, PreparedData("train", "test", Path("."), "ukbb"), Path("runs/x"))
    assert (pool, drawn) == (("fresh slices", [8]) if fresh else ("test", []))
    assert name.startswith("fresh test cohort" if fresh else "held-out test set")


@pytest.mark.parametrize("overrides", [["evaluation.training_set.fid_reference=fresh"],  # no fresh cohort
                                       ["evaluation.training_set.fid_reference=inception"]])
def test_a_bad_fid_reference_names_the_key(overrides):
    with pytest.raises(InputError, match="evaluation.training_set.fid_reference"):
        load_run_config(SMOKE, overrides)


def test_the_fresh_cohort_has_the_phantom_knobs_of_the_others(monkeypatch, tmp_path):
    knobs = []

    def stop(out_dir, n, seed, **kwargs):
        knobs.append(kwargs["knobs"])
        raise StopIteration  # the cohort itself is not needed

    monkeypatch.setattr(prepare_data, "synthetic_cohort", stop)
    cfg = load_run_config(SMOKE, ["fresh_test.n=8", "data.phantom.preserved_ef=0.5"])
    with pytest.raises(StopIteration):
        prepare_data.fresh_test_set(cfg.data, cfg.fresh_test, tmp_path)
    assert knobs == [cfg.data.phantom] and knobs[0].preserved_ef == 0.5


def test_audit_of_a_folder_without_a_finished_plan_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml: not found" in err
