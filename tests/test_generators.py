"""Separately trained generators and the fresh test cohort: config checks, sub-run configs, one end-to-end run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import train
from data.errors import InputError
from run.config import load_run_config
from run.generators import generator_config, generator_folders

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_generator_config_sets_every_training_seed_and_nothing_else():
    cfg = load_run_config(SMOKE, ["generators.extra_seeds=[3, 4]", "fresh_test.n=8"])
    sub = generator_config(cfg, 3)
    assert (sub.vae_train.seed, sub.ldm_train.seed, sub.controlnet_train.seed) == (3, 3, 3)
    assert sub.generators.extra_seeds == () and sub.fresh_test.n == 0  # a sub-run trains no generators of its own
    assert (sub.data, sub.plan, sub.sample, sub.unet) == (cfg.data, cfg.plan, cfg.sample, cfg.unet)
    assert generator_folders(cfg, Path("runs/x")) == [Path("runs/x"), Path("runs/x/generators/seed-3"),
                                                      Path("runs/x/generators/seed-4")]


@pytest.mark.parametrize("overrides, key", [
    (["generators.extra_seeds=[1, 1]"], "generators.extra_seeds"),
    (["generators.extra_seeds=[0]"], "generators.extra_seeds"),  # the run's own generator already has seed 0
    (["fresh_test.n=10", "fresh_test.seed=1"], "fresh_test.seed"),  # drew the run's test cohort
    (["fresh_test.n=10", "data.root=somewhere"], "fresh_test.n"),  # real cohorts test on their held-out subjects
    (["fresh_test.n=-1"], "fresh_test.n"),
])
def test_bad_generator_and_fresh_test_settings_name_the_key(overrides, key):
    with pytest.raises(InputError) as err:
        load_run_config(SMOKE, overrides)
    assert key in str(err.value)


@pytest.mark.slow
def test_extra_generator_trains_apart_and_the_experiment_scores_a_fresh_cohort(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--config", SMOKE, "--runs", str(runs), "generators.extra_seeds=[1]", "fresh_test.n=8"]
    assert train.main(args) == 0
    run = runs / "smoke"
    manifest = json.loads((run / "generators" / "generators.json").read_text())["generators"]
    assert [g["folder"] for g in manifest] == [".", "generators/seed-1"]
    assert manifest[1]["seeds"] == {"vae_train": 1, "ldm_train": 1, "controlnet_train": 1}
    for name in ("vae", "ldm", "controlnet"):  # separately trained: different weights
        assert manifest[0]["sha256"][name] != manifest[1]["sha256"][name]
    plans = [(run / f / "plan.csv").read_text() for f in (".", "generators/seed-1")]
    assert plans[0] == plans[1]  # the same plan, sampled by each generator
    experiment = json.loads((run / "experiment" / "experiment.json").read_text())
    tested = set(experiment["test"]["subject_ids"])
    assert len(tested) == 8 and all(int(s) >= 3000001 for s in tested)  # the fresh cohort, not the run's test set
    split = json.loads((run / "split.json").read_text())
    assert not tested & (set(split["train"]) | set(split["test"]))
    assert train.main(args) == 0  # a second call reuses every generator
    assert "[generators] done already" in capsys.readouterr().out
