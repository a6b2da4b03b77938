"""Issue 18, class 14: checks that came too late. The whole run config is validated when it is loaded (the
diffusion section in DiffusionConfig, the sampling chain against the schedule in RunConfig), so train.py refuses
before the VAE trains and sample.py before any model loads or --out exists; evaluation writes its outputs all or
none, last."""
import pytest

import sample
import train
from data.atomic import atomic_write_all
from evaluation.__main__ import main as evaluate_main
from evaluation.report import write_outputs
from run.config import load_run_config
from tests.test_robustness import PROMPT, SMOKE, assert_refused, call, tree

LATE = {  # override -> fragments; each was refused only after earlier stages had trained (or never)
    "diffusion.beta_end=2": ["diffusion.beta_end", "expected a number in (0, 1)", "2.0"],
    "diffusion.beta_start=0": ["diffusion.beta_start", "(0, 1)"],
    "diffusion.beta_start=0.5": ["diffusion.beta_end", "expected beta_start <= beta_end", "0.5 > 0.012"],
    "diffusion.schedule=cos": ["diffusion.schedule", "expected one of linear, scaled_linear, cosine", "'cos'"],
    "diffusion.prediction=x0": ["diffusion.prediction", "expected one of epsilon, v"],
    "diffusion.num_train_steps=0": ["diffusion.num_train_steps", "[1, 100000]"],
    "diffusion.num_train_steps=1000000000": ["diffusion.num_train_steps", "[1, 100000]"],
    "diffusion.cond_dropout=1.5": ["diffusion.cond_dropout", "[0, 1]"],
    "diffusion.zero_terminal_snr=true": ["diffusion.zero_terminal_snr", "needs diffusion.prediction=v"],
    "diffusion.loss_weighting=snr": ["diffusion.loss_weighting", "expected one of none, min_snr", "'snr'"],
    "diffusion.min_snr_gamma=0": ["diffusion.min_snr_gamma", "(0, inf)"],
    "sample.steps=100000": ["sample.steps", "expected an integer in [1, 1000]", "got 100000",
                            "diffusion.num_train_steps = 1000"],
    "sample.steps_offset=5": ["sample.steps_offset", "<= 999", "got 5"],
}


@pytest.mark.parametrize("override", LATE)
def test_train_refuses_the_whole_config_before_any_stage(tmp_path, capsys, override):
    code, out, err = call(capsys, train.main, ["--config", SMOKE, "--runs", tmp_path / "runs", override])
    assert_refused(code, err, LATE[override])
    assert "[data]" not in out and tree(tmp_path) == []


def test_a_cosine_schedule_ignores_the_beta_order():
    cfg = load_run_config(SMOKE, ["diffusion.schedule=cosine", "diffusion.beta_start=0.5"])
    assert cfg.diffusion.beta_start == 0.5
    assert load_run_config(SMOKE, ["sample.steps=1000"]).sample.steps == 1000  # the end of the range holds


def test_sample_refuses_steps_past_the_schedule_before_loading_models(tmp_path, capsys):
    # checkpoints that do not exist: the refusal must come from the config, before any model is touched
    ldm = tmp_path / "missing.safetensors"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\nsample: {steps: 20}\n")
    for override, fragment in [("sample.steps=100000", "sample.steps"),
                               ("sample.steps_offset=999", "sample.steps_offset")]:
        code, _, err = call(capsys, sample.main, ["--run", tmp_path / "run", "--vae", ldm, "--ldm", ldm, "--prompt",
                                                  PROMPT, "--out", tmp_path / "out", override])
        assert_refused(code, err, ["config.yaml", fragment, "diffusion.num_train_steps = 1000"])
        assert not (tmp_path / "out").exists()


def test_outputs_written_together_or_not_at_all(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(OSError):
        atomic_write_all({tmp_path / "a.json": b"1", tmp_path / "blocker" / "b.md": b"2"})
    assert tree(tmp_path) == ["blocker"]  # neither a.json nor a temp file is left
    (tmp_path / "c.md").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_all({tmp_path / "c.json": b"1", tmp_path / "c.md": b"2"})
    assert tree(tmp_path) == ["blocker", "c.md"]
    assert atomic_write_all({tmp_path / "d.json": b"1", tmp_path / "d.md": b"2"}) == [tmp_path / "d.json",
                                                                                          tmp_path / "d.md"]
    assert (tmp_path / "d.md").read_bytes() == b"2"


def test_write_outputs_leaves_no_metrics_json_when_the_outputs_cannot_be_written(tmp_path, monkeypatch):
    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("evaluation.report.markdown_table", lambda data: "# metrics\n")
    monkeypatch.setattr("os.replace", full_disk)
    with pytest.raises(OSError):
        write_outputs({"fid": {"skipped": "few"}, "notes": []}, tmp_path / "m.json", tmp_path / "m.md")
    assert tree(tmp_path) == []


def test_evaluation_refuses_an_output_beside_out_that_is_a_folder_before_computing(tmp_path, capsys):
    (tmp_path / "metrics.md").mkdir()
    code, _, err = call(capsys, evaluate_main, ["--real", tmp_path / "missing.npz", "--fake", tmp_path / "none",
                                                "--out", tmp_path / "metrics.json"])
    assert_refused(code, err, ["metrics.md", "is a folder", "--out names the metrics JSON file"])
    assert tree(tmp_path) == ["metrics.md"]
