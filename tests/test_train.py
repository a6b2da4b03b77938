"""train.py end to end on the minute-scale smoke config: outputs, skip-when-done, resume, clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train
from classify.experiment import ARMS
from ddpm.checkpoint import load_checkpoint
from run.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert train.main(["--config", SMOKE, "--runs", str(runs), "--stage", "controlnet"]) == 0
    return runs / "smoke"


def test_stages_write_checkpoints_grids_and_metrics(smoke_run):
    for name in ("vae.safetensors", "ldm.safetensors", "controlnet.safetensors", "config.yaml", "split.json",
                 "composition.csv", "vae_reconstructions.png", "ldm_samples.png", "controlnet_samples.png"):
        assert (smoke_run / name).is_file(), name
    _, meta = load_checkpoint(smoke_run / "vae.safetensors", expect_stage="vae")
    assert meta["scale_factor"] > 0 and meta["heldout"]["n"] > 0
    split = json.loads((smoke_run / "split.json").read_text())
    assert split["train"] and split["test"] and not set(split["train"]) & set(split["test"])
    records = [json.loads(line) for line in (smoke_run / "ldm" / "ldm-train-metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and all(np.isfinite(r["loss"]) for r in records)


def test_generation_is_deterministic_and_follows_seed(smoke_run):
    pipe = load_pipeline(smoke_run / "vae.safetensors", smoke_run / "ldm.safetensors", smoke_run / "controlnet.safetensors")
    masks = np.zeros((2, 2, 32, 32), dtype=np.uint8)
    masks[:, :, 10:20, 10:20] = 2
    masks[:, :, 12:18, 12:18] = 1
    prompts = ["Female, age in 40s, normal BMI, heart failure"] * 2
    a = pipe.generate(prompts, masks, seed=1, steps=3)
    b = pipe.generate(prompts, masks, seed=1, steps=3)
    c = pipe.generate(prompts, masks, seed=2, steps=3)
    assert a.shape == (2, 2, 32, 32) and np.array_equal(a, b) and not np.allclose(a, c)


def test_finished_stages_are_skipped(smoke_run, capsys):
    before = (smoke_run / "ldm.safetensors").stat().st_mtime_ns
    assert train.main(["--config", SMOKE, "--runs", str(smoke_run.parent), "--stage", "ldm"]) == 0
    assert "[ldm] done already" in capsys.readouterr().out
    assert (smoke_run / "ldm.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_bad_config_is_one_clear_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", SMOKE, "--runs", str(tmp_path), "vae_train.stpes=3"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "vae_train.stpes" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "no partial output for an impossible config"


@pytest.mark.slow
def test_stage_all_writes_every_report_section(smoke_run, capsys):
    assert train.main(["--config", SMOKE, "--runs", str(smoke_run.parent), "--stage", "all"]) == 0
    out = capsys.readouterr().out
    assert "[vae] done already" in out and "[controlnet] done already" in out  # resumable: trained stages skipped
    report = (smoke_run / "report.md").read_text()
    for heading in ("Cohort composition before/after", "Synthetic patients per subgroup", "Realism and control fidelity",
                    "The synthetic training images (the plan's samples) evaluated",
                    "Debiasing: primary endpoint, arms, secondary comparisons", "Reproduce"):
        assert f"## {heading}" in report, heading
    for name in ("plan.csv", "samples_by_subgroup.png", "composition.png", "evaluation/metrics.json", "evaluation/training_set.json",
                 "experiment/experiment.json", "experiment/subgroup_balanced_accuracy.png"):
        assert (smoke_run / name).is_file(), name
    plan = (smoke_run / "plan.csv").read_text().splitlines()
    assert len(plan) - 1 == len(list((smoke_run / "samples").glob("*.json")))
    experiment = json.loads((smoke_run / "experiment" / "experiment.json").read_text())
    assert {"real", "reweighted", "real+synthetic"} <= set(experiment["arms"])
    assert experiment["primary"]["verdict"] in ("helped", "hurt", "inconclusive", "undetermined")


@pytest.mark.slow
def test_acdc_rare_group_runs_every_arm_and_reports_the_health_groups(tmp_path, capsys):
    """The real-data debiasing arm on a fixture ACDC cohort (4 patients per group): MINF made rare in training."""
    from tests.fixtures import write_acdc_fixture

    root = write_acdc_fixture(tmp_path, n=20)
    overrides = ["data.layout=acdc", "data.rare={key: health, value: myocardial_infarction, keep: 0.34}",
                 "plan={mode: equalise, keys: [health], min_count: 4}", "experiment.groups=[health]",
                 "experiment.positive=[dilated_cardiomyopathy, myocardial_infarction]"]
    runs = tmp_path / "runs"
    assert train.main(["--config", SMOKE, "--runs", str(runs), "--data", str(root), "--name", "rare", *overrides]) == 0
    run = runs / "rare"
    assert "[data] rare group: health = myocardial_infarction" in capsys.readouterr().out
    split = json.loads((run / "split.json").read_text())
    rare = split["rare"]
    assert len(rare["kept"]) == 1 and len(rare["dropped"]) == 2  # of the 3 training MINF patients
    assert not set(rare["dropped"]) & set(split["train"] + split["test"])
    info = {p.name: (p / "Info.cfg").read_text() for p in root.iterdir()}
    assert sum("Group: MINF" in info[s] for s in split["test"]) == 1  # the held-out MINF patient stays
    plan = pd.read_csv(run / "plan.csv")
    infarcts = plan[plan["health"] == "myocardial_infarction"]
    assert len(infarcts) == 3 and set(infarcts["mask_subject_id"]) == set(rare["kept"])  # 1 real + 3 = 4
    experiment = json.loads((run / "experiment" / "experiment.json").read_text())
    assert experiment["arms"] == [a for a in ARMS if a != "oracle"]  # every arm the smoke config lists
    assert "real cohort" in experiment["skipped"]["oracle"]  # only the phantom can draw more real subjects
    assert {r["group"] for r in experiment["intervals"]["real"]["subgroups"]} == {
        "healthy", "myocardial_infarction", "dilated_cardiomyopathy", "hypertrophic_cardiomyopathy",
        "abnormal_right_ventricle"}
    report = (run / "report.md").read_text()
    assert "## Rare group (data.rare)" in report and "kept 1 of 3" in report
    assert "| health group | myocardial_infarction (rare) |" in report
    assert "The rare group (health group myocardial_infarction)" in report
    assert "Secondary comparisons" in report and report.index("**Primary endpoint**") < report.index("### Arms")
