"""Issue 18, class 1: no stage trusts a stale input. Each finished downstream stage records the sha256 of the run
files it consumed and produced (run/provenance.py); reusing it, or reading its output in a later stage, first
checks they are unchanged."""
import json

import pytest

import train
from data.errors import InputError
from ddpm.checkpoint import file_sha256
from run.downstream import load_planned
from run.provenance import RECORD, STAGE_FILES, forget_stage, record_stage, verify_stage
from tests.test_robustness import FAST, SMOKE, assert_refused, call


def _fake_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("vae.safetensors", "ldm.safetensors", "controlnet.safetensors"):
        (run / name).write_bytes(name.encode())
    (run / "plan.csv").write_text("sample_id,prompt\nsyn-1,Female, age in 40s, normal BMI, heart failure\n")
    (run / "samples.json").write_text(json.dumps({"plan_sha256": file_sha256(run / "plan.csv")}))
    for stage in STAGE_FILES:
        record_stage(run, stage)
    return run


@pytest.mark.parametrize("stage, changed", [(stage, name) for stage, names in STAGE_FILES.items() for name in names])
def test_every_recorded_file_changed_after_its_stage_is_refused_naming_it(tmp_path, stage, changed):
    run = _fake_run(tmp_path)
    verify_stage(run, stage)  # unchanged: fine
    (run / changed).write_bytes(b"remade")
    with pytest.raises(InputError, match=f"{changed}.*the {stage} stage used this file with sha256 .* now has "
                                         f"sha256 .*--force {stage}"):
        verify_stage(run, stage)


def test_a_recorded_file_that_vanished_is_refused(tmp_path):
    run = _fake_run(tmp_path)
    (run / "controlnet.safetensors").unlink()
    with pytest.raises(InputError, match="controlnet.safetensors.*it is missing"):
        verify_stage(run, "evaluation")


def test_the_plan_is_checked_before_samples_are_paired_with_its_rows(tmp_path):
    run = _fake_run(tmp_path)
    (run / "plan.csv").write_text((run / "plan.csv").read_text().replace("heart failure", "healthy"))
    with pytest.raises(InputError, match="plan.csv.*the plan stage used this file"):
        load_planned(run)


def test_runs_without_a_record_fall_back_to_the_plan_sha256_in_samples_json(tmp_path):
    run = _fake_run(tmp_path)
    (run / RECORD).unlink()
    verify_stage(run, "plan")
    verify_stage(run, "experiment")  # nothing recorded: nothing to check
    (run / "plan.csv").write_text("sample_id,prompt\n")
    with pytest.raises(InputError, match="plan.csv.*sha256"):
        verify_stage(run, "plan")
    (run / "samples.json").write_text("{not json")
    with pytest.raises(InputError, match="samples.json.*unreadable samples manifest"):
        verify_stage(run, "plan")


def test_a_rerun_stage_forgets_its_old_record_first(tmp_path):
    run = _fake_run(tmp_path)
    forget_stage(run, "plan")  # a run killed now must not have the old record vouch for a new plan.csv
    assert "plan" not in json.loads((run / RECORD).read_text())
    assert set(json.loads((run / RECORD).read_text())) == {"evaluation", "experiment"}


def test_a_damaged_record_is_one_line(tmp_path):
    run = _fake_run(tmp_path)
    (run / RECORD).write_text("[1, 2]")
    with pytest.raises(InputError, match="provenance.json.*expected a JSON object"):
        verify_stage(run, "plan")


@pytest.mark.slow
def test_train_refuses_an_experiment_on_samples_of_a_remade_plan(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "all", *FAST])
    assert code == 0, err
    run = runs / "smoke"
    assert set(json.loads((run / RECORD).read_text())) == {"plan", "evaluation", "experiment"}
    experiment = (run / "experiment" / "experiment.json").read_bytes()
    plan = (run / "plan.csv").read_text()
    (run / "plan.csv").write_text(plan.replace("heart_failure", "healthy").replace("heart failure", "healthy"))
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "all", "--force",
                                             "experiment", *FAST])
    assert_refused(code, err, ["plan.csv", "the plan stage used this file with sha256", "--force plan"])
    assert (run / "experiment" / "experiment.json").read_bytes() == experiment  # nothing redone on the stale plan
    (run / "plan.csv").write_text(plan)  # the original plan back: the run is consistent again
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "all", *FAST])
    assert code == 0, err
