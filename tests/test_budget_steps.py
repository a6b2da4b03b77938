"""bench/budget_steps.py: rates from metrics logs and step counts that fit a budget."""
import json

import pytest

from bench.budget_steps import ROUND_TO, SHARES, main, seconds_per_step, steps_for_budget


def _log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "loss": 0.1, "sec": t}) + "\n" for s, t in rows))


def test_rate_ignores_startup_before_first_record(tmp_path):
    # 10 s of start-up before step 25, then 0.2 s a step: the rate is 0.2, not (10 + 0.2 * 100) / 125
    path = tmp_path / "m.jsonl"
    _log(path, [(25, 15.0), (50, 20.0), (125, 35.0)])
    assert seconds_per_step(path) == pytest.approx(0.2)


def test_rate_needs_two_records(tmp_path):
    path = tmp_path / "m.jsonl"
    _log(path, [(25, 1.0)])
    with pytest.raises(ValueError, match="two log records"):
        seconds_per_step(path)


def test_steps_fill_each_share_and_respect_caps():
    rates = {"vae": 0.01, "ldm": 0.05, "controlnet": 0.04}
    steps = steps_for_budget(rates, 1000.0)
    for stage, n in steps.items():
        assert n % ROUND_TO == 0
        assert n * rates[stage] <= SHARES[stage] * 1000.0 < (n + ROUND_TO) * rates[stage]
    assert sum(n * rates[s] for s, n in steps.items()) <= 1000.0
    capped = steps_for_budget(rates, 1000.0, {"vae": 300, "ldm": 10**6, "controlnet": 10**6})
    assert capped["vae"] == 300 and capped["ldm"] == steps["ldm"]


def test_cli_prints_overrides_and_names_a_missing_log(tmp_path, capsys):
    for stage in SHARES:
        _log(tmp_path / stage / f"{stage}-train-metrics.jsonl", [(25, 2.0), (125, 12.0)])
    assert main([str(tmp_path), "100"]) == 0
    assert capsys.readouterr().out.split() == ["vae_train.steps=100", "ldm_train.steps=400", "controlnet_train.steps=400"]
    (tmp_path / "ldm" / "ldm-train-metrics.jsonl").unlink()
    assert main([str(tmp_path), "100"]) == 2
    assert "ldm-train-metrics.jsonl" in capsys.readouterr().err
