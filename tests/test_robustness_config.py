"""train.py against a bad config (overrides, names, unsafe or malformed YAML): one `error:` line, nothing written."""
import pytest

import train
from tests.test_robustness import SMOKE, assert_refused, call, tree


CONFIG_FAULTS = {  # name -> (extra argv, fragments)
    "unknown section": (["vea.base_channels=8"], ["vea", "unknown key", "expected one of"]),
    "wrong type": (["vae_train.steps=abc"], ["vae_train.steps", "expected an integer", "'abc'"]),
    "wrong item type": (["vae.channel_mult=[1, x]"], ["vae.channel_mult", "expected positive ints", "(1, 'x')"]),
    "override without '='": (["vae_train.steps"], ["vae_train.steps", "expected KEY=VALUE"]),
    "impossible fraction": (["data.test_fraction=1.5"], ["data.test_fraction", "expected a fraction in (0, 1)"]),
    "unknown precision": (["vae_train.precision=fp16"], ["precision", "expected 'fp32' or 'bf16'", "fp16"]),
    "unknown device": (["device=tpu"], ["device", "expected 'cpu', 'cuda', 'cuda:N' or 'auto'", "tpu"]),
    "sizes that do not fit": (["unet.in_channels=3"], ["unet.in_channels", "must equal vae.latent_channels (4)"]),
    "name with a slash": (["--name", "../escape"], ["name", "may only contain"]),
    "name '..'": (["name=.."], ["name", "'..'", "not only dots"]),
    "empty name": (["name=''"], ["name", "''", "not only dots"]),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_train_refuses_a_bad_config_and_writes_nothing(tmp_path, capsys, fault):
    extra, fragments = CONFIG_FAULTS[fault]
    runs = tmp_path / "sub" / "runs"
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "vae", *extra])
    assert_refused(code, err, fragments)
    assert tree(tmp_path) == [], "nothing written, not even next to --runs"


@pytest.mark.parametrize("text, fragments", [
    ("name: x\nvae: !!python/object/apply:os.system ['touch PWNED']\n", ["not valid YAML", "python/object"]),
    ("- a list\n- not a mapping\n", ["expected a mapping of sections"]),
    ("name: [unclosed\n", ["not valid YAML"]),
])
def test_train_refuses_unsafe_or_malformed_config_files(tmp_path, capsys, monkeypatch, text, fragments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    code, _, err = call(capsys, train.main, ["--config", tmp_path / "bad.yaml", "--runs", tmp_path / "runs"])
    assert_refused(code, err, ["bad.yaml", *fragments])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no PWNED, no run folder


def test_float_overrides_in_exponent_form_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; a user means a number (this override used to be refused)
    from run.config import load_run_config
    cfg = load_run_config(SMOKE, ["ldm_train.lr=1e-4", "vae_train.lr=2E3"])
    assert cfg.ldm_train.lr == 1e-4 and cfg.vae_train.lr == 2000.0
    for bad in ("1e999", "nan", "1e-4x"):
        with pytest.raises(Exception, match="expected a (finite )?number"):
            load_run_config(SMOKE, [f"ldm_train.lr={bad}"])
