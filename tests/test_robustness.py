"""Every user-facing entry point against bad, corrupted and untrusted input: exit code != 0, one `error:` line naming
the file or field and what was expected, no traceback, and nothing written. docs/robustness.md tabulates these cases.
Also: numerical faults end to end (exit 3 naming the step and the last good checkpoint) and a bf16 training check.
train.py's cohort and config and python -m evaluation: tests/test_robustness_{cohort,config,evaluation}.py."""
import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sample
import train
from data.nifti import save_nifti
from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.trainer import TrainConfig, train_loop
from ddpm.unet import UNet, UNetConfig
from ddpm.vae import AutoencoderKL, VAEConfig, vae_loss

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FIRST = "1000001"
PROMPT = "Female, age in 40s, normal BMI, heart failure"
FAST = ["vae_train.steps=1", "vae_train.checkpoint_every=1", "ldm_train.steps=1", "ldm_train.checkpoint_every=1",
        "controlnet_train.steps=1", "controlnet_train.checkpoint_every=1", "data.synthetic_n=8",
        "data.synthetic_test_n=4", "sample.steps=1"]


class Payload:
    """Unpickling this runs code: it creates the file PWNED next to the malicious file."""

    def __init__(self, folder: Path) -> None:
        self.marker = str(folder / "PWNED")

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def plant_pickle(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": Payload(path.parent)}))
    return path


def call(capsys, main, argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, fragments, exit_code: int = 2) -> str:
    """Exit code, exactly one error line holding every fragment, no traceback. -> the error line."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == exit_code, err
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------- a trained run for the checkpoint-taking CLIs

def _resaved(src: Path, dst: Path, key_part: str) -> Path:
    """A checkpoint like src (same stage and config) whose weights differ: 'the same model from another run'."""
    states, meta = load_checkpoint(src)
    group = states["ema"]
    name = next(k for k in group if key_part in k and k != "__extras__")
    group[name] = group[name] + 0.01
    save_checkpoint(dst, {g: {k: v for k, v in s.items() if k != "__extras__"} for g, s in states.items()}, meta)
    return dst


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)  # module fixtures run before the autouse one
    runs = tmp_path_factory.mktemp("runs")
    assert train.main(["--config", SMOKE, "--runs", str(runs), "--stage", "controlnet", *FAST]) == 0
    folder = runs / "smoke"
    others = tmp_path_factory.mktemp("others")
    evil = tmp_path_factory.mktemp("evil")
    masks = tmp_path_factory.mktemp("masks")
    ed = folder / "cohort" / FIRST / "seg_sa_ED.nii.gz"
    mask, affine = np.asarray(nib.load(str(ed)).dataobj), nib.load(str(ed)).affine
    corrupt = masks / "corrupt.nii.gz"
    corrupt.write_bytes(ed.read_bytes()[:200])
    save_nifti(masks / "four_d.nii.gz", np.stack([mask, mask], -1), affine)
    float_mask = mask.astype(np.float32)
    float_mask[0, 0, 0] = np.nan
    save_nifti(masks / "nan.nii.gz", float_mask, affine)
    Image.fromarray(np.stack([np.zeros((32, 32), np.uint8), np.full((32, 32), 90, np.uint8), np.zeros((32, 32), np.uint8)],
                             -1)).save(masks / "colour.png")
    (masks / "mask.txt").write_text("1 2 3")
    return SimpleNamespace(
        dir=folder, vae=folder / "vae.safetensors", ldm=folder / "ldm.safetensors",
        controlnet=folder / "controlnet.safetensors", ed=ed, masks=masks,
        other_vae=_resaved(folder / "vae.safetensors", others / "vae.safetensors", "vae."),
        other_ldm=_resaved(folder / "ldm.safetensors", others / "ldm.safetensors", "unet."),
        truncated=_truncated_copy(folder / "ldm.safetensors", others / "truncated.safetensors"),
        evil=plant_pickle(evil / "model.safetensors"), evil_pt=plant_pickle(evil / "model.pt"))


def _truncated_copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


# ------------------------------------------------------------------------------------------------------ sample.py

SAMPLE_FAULTS = {  # name -> (argv from the run fixture, fragments); every case also passes --out
    "prompt outside the vocabulary": (lambda r: ["--run", r.dir, "--prompt", "Female, age in 200s"],
                                      ["prompt", "age in 200s", "not a decade in 0..120"]),
    "field outside the vocabulary": (lambda r: ["--run", r.dir, "--sex", "F", "--health", "flu"],
                                     ["health", "flu", "heart_failure"]),
    "age not a number": (lambda r: ["--run", r.dir, "--age", "abc"], ["age", "expected a number"]),
    "impossible BMI": (lambda r: ["--run", r.dir, "--bmi", "500"], ["bmi", "impossible value"]),
    "vae checkpoint as --ldm": (lambda r: ["--vae", r.vae, "--ldm", r.vae, "--prompt", PROMPT],
                                ["vae.safetensors", "checkpoint of stage 'vae'; expected a 'ldm' checkpoint"]),
    "ldm checkpoint as --vae": (lambda r: ["--vae", r.ldm, "--ldm", r.ldm, "--prompt", PROMPT],
                                ["ldm.safetensors", "stage 'ldm'; expected a 'vae'"]),
    "controlnet checkpoint as --ldm": (lambda r: ["--run", r.dir, "--ldm", r.controlnet, "--prompt", PROMPT],
                                       ["controlnet.safetensors", "expected a 'ldm'"]),
    "training-step checkpoint as --ldm": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "--ldm",
                                                     r.dir / "ldm" / "ldm-train-step0000001.safetensors"],
                                          ["stage 'ldm-train'; expected a 'ldm'"]),
    "VAE of another run": (lambda r: ["--run", r.dir, "--vae", r.other_vae, "--prompt", PROMPT],
                           ["ldm.safetensors", "was trained on the vae checkpoint",
                            "pass the vae checkpoint of the same run"]),
    "ControlNet of another LDM": (lambda r: ["--run", r.dir, "--ldm", r.other_ldm, "--mask", r.ed, "--prompt", PROMPT],
                                  ["controlnet.safetensors", "was trained on the ldm checkpoint"]),
    "truncated checkpoint": (lambda r: ["--run", r.dir, "--ldm", r.truncated, "--prompt", PROMPT],
                             ["truncated.safetensors", "not a cardiac-ldm safetensors checkpoint"]),
    "missing checkpoint": (lambda r: ["--run", r.dir, "--vae", r.dir / "nope.safetensors", "--prompt", PROMPT],
                           ["nope.safetensors", "checkpoint not found"]),
    "pickle as --vae": (lambda r: ["--run", r.dir, "--vae", r.evil, "--prompt", PROMPT],
                        ["model.safetensors", "refusing to unpickle"]),
    "pickle as --ldm": (lambda r: ["--run", r.dir, "--ldm", r.evil_pt, "--prompt", PROMPT],
                        ["model.pt", "refusing to unpickle"]),
    "pickle as --controlnet": (lambda r: ["--run", r.dir, "--controlnet", r.evil, "--mask", r.ed, "--prompt", PROMPT],
                               ["model.safetensors", "refusing to unpickle"]),
    "corrupt mask NIfTI": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "--mask", r.masks / "corrupt.nii.gz"],
                           ["corrupt.nii.gz", "cannot read NIfTI"]),
    "4D mask": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "--mask", r.masks / "four_d.nii.gz"],
                ["four_d.nii.gz", "expected 3D volume"]),
    "NaN in a mask": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "--mask", r.masks / "nan.nii.gz"],
                      ["nan.nii.gz", "non-integer voxel", "expected integer labels"]),
    "colour PNG mask": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "--mask", r.masks / "colour.png"],
                        ["colour.png", "expected a greyscale label image"]),
    "unknown mask format": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "--mask", r.masks / "mask.txt"],
                            ["mask.txt", "unknown mask format"]),
    "unknown device": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "device=tpu"], ["device", "tpu"]),
    "sample.steps=0": (lambda r: ["--run", r.dir, "--prompt", PROMPT, "sample.steps=0"],
                       ["steps", "expected an integer in [1, inf), got 0"]),
}


@pytest.mark.parametrize("fault", SAMPLE_FAULTS)
def test_sample_refuses_bad_input_and_writes_nothing(run, tmp_path, capsys, fault):
    argv, fragments = SAMPLE_FAULTS[fault]
    code, _, err = call(capsys, sample.main, [*argv(run), "--out", tmp_path / "out"])
    assert_refused(code, err, fragments)
    assert not (tmp_path / "out").exists()
    assert not (run.evil.parent / "PWNED").exists()


PLAN_HEADER = "sample_id,sex,age,bmi,health,prompt,mask_subject_id,mask_row,seed,jitter,mask_path"


def plan_text(*rows: dict) -> str:
    """A plan CSV of rows that are valid (mask from the file mask.nii.gz) except for the fields given."""
    lines = [PLAN_HEADER]
    for row in rows:
        row = {"sample_id": "syn-1", "age": "47", "health": "heart_failure", "prompt": PROMPT, "seed": "1", **row}
        lines.append(f'{row["sample_id"]},female,{row["age"]},22,{row["health"]},"{row["prompt"]}",,,'
                     f'{row["seed"]},0,mask.nii.gz')
    return "\n".join(lines) + "\n"


PLAN_FAULTS = {  # name -> (plan CSV text, fragments)
    "missing columns": ("sample_id,sex,age\nsyn-1,female,47\n", ["plan.csv", "missing column(s)", "health"]),
    "empty file": ("", ["plan.csv", "cannot parse CSV"]),
    "wrong type": (plan_text({"seed": "abc"}), ["line 2", "seed", "expected an integer", "'abc'"]),
    "duplicate ids": (plan_text({}, {"seed": "2"}), ["line 3", "sample_id", "duplicate sample id"]),
    "impossible age": (plan_text({"age": "500"}), ["line 2", "age", "impossible value"]),
    "health outside the vocabulary": (plan_text({"health": "flu"}), ["line 2", "health", "flu"]),
    "prompt outside the vocabulary": (plan_text({"prompt": "Female, flu"}), ["line 2", "flu"]),
    "sample id '../../etc/x'": (plan_text({"sample_id": "../../etc/x"}), ["sample_id", "expected letters, digits"]),
    "absolute sample id": (plan_text({"sample_id": "/tmp/x"}), ["sample_id", "expected letters, digits"]),
    "hidden sample id": (plan_text({"sample_id": ".x"}), ["sample_id", "not starting with '.'"]),
}


@pytest.mark.parametrize("fault", PLAN_FAULTS)
def test_sample_refuses_a_bad_plan_and_writes_nothing(run, tmp_path, capsys, fault):
    text, fragments = PLAN_FAULTS[fault]
    shutil.copy(run.ed, tmp_path / "mask.nii.gz")
    (tmp_path / "plan.csv").write_text(text)
    code, _, err = call(capsys, sample.main, ["--run", run.dir, "--plan", tmp_path / "plan.csv", "--out", tmp_path / "out"])
    assert_refused(code, err, fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "plan.csv"]


def test_batch_api_refuses_ids_that_leave_the_output_folder(run, tmp_path):
    # defence in depth: run_requests itself refuses what load_plan refuses
    from ddpm.sampling import SampleSettings
    from run.samples import SampleRequest, run_requests
    from data.errors import InputError
    for bad in ("../x", "/tmp/x", ".hidden", "a/b"):
        with pytest.raises(InputError, match="expected letters, digits"):
            run_requests(None, [SampleRequest(bad, PROMPT, 0)], tmp_path / "out", SampleSettings(), {})
    assert not (tmp_path / "out").exists()


def test_sample_output_folder_that_is_a_file(run, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    code, _, err = call(capsys, sample.main, ["--run", run.dir, "--prompt", PROMPT, "--out", tmp_path / "out"])
    assert_refused(code, err, [str(tmp_path / "out"), "is not a folder"])
    assert (tmp_path / "out").read_text() == "a file"


# ------------------------------------------------------------------------- train.py on an existing run folder

def _copy_run(run, tmp_path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(run.dir, runs / "smoke")
    return runs


def test_resume_refuses_a_planted_pickle_and_a_truncated_checkpoint(run, tmp_path, capsys):
    runs = _copy_run(run, tmp_path)
    evil = plant_pickle(runs / "smoke" / "vae" / "vae-train-step0000009.safetensors")  # newest: resume picks it
    argv = ["--config", SMOKE, "--runs", runs, "--stage", "vae", "--force", "vae", "--resume", *FAST]
    assert_refused(*call(capsys, train.main, argv)[::2], ["vae-train-step0000009.safetensors", "refusing to unpickle"])
    assert not (evil.parent / "PWNED").exists()
    _truncated_copy(run.dir / "vae" / "vae-train-step0000001.safetensors", evil)
    assert_refused(*call(capsys, train.main, argv)[::2], ["vae-train-step0000009.safetensors", "not a cardiac-ldm"])
    stray = runs / "smoke" / "vae" / "vae-train-step0000009 (copy).safetensors"
    evil.rename(stray)  # a name that is not ours is ignored, never a crash: resume from step 1, the only real one
    code, _, err = call(capsys, train.main, argv)
    assert code == 0, err
    assert stray.is_file()


def test_stage_outputs_of_another_config_are_not_reused(run, tmp_path, capsys):
    runs = _copy_run(run, tmp_path)
    config_before = (runs / "smoke" / "config.yaml").read_bytes()
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "ldm", *FAST,
                                             "vae.base_channels=16"])
    assert_refused(code, err, ["vae.safetensors", "trained with another config", "vae.base_channels: 8 -> 16",
                               "--force vae"])
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "ldm", "--force", "vae", *FAST])
    assert_refused(code, err, ["ldm.safetensors", "--force vae retrains the vae", "add --force ldm"])
    shutil.copy(run.other_vae, runs / "smoke" / "vae.safetensors")  # the run's VAE replaced by another one
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "ldm", *FAST])
    assert_refused(code, err, ["ldm.safetensors", "trained on another vae", "--force ldm"])
    assert (runs / "smoke" / "config.yaml").read_bytes() == config_before  # the run's record is not rewritten


def test_a_damaged_latent_cache_is_rebuilt(run, tmp_path, capsys):
    runs = _copy_run(run, tmp_path)
    for cache in (runs / "smoke" / "cache").glob("latents-*.safetensors"):
        _truncated_copy(cache, cache)
    with pytest.warns(UserWarning, match="rebuilding the latent cache"):
        code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "ldm", "--force", "ldm",
                                                 *FAST])
    assert code == 0, err
    rebuilt, original = load_checkpoint(runs / "smoke" / "ldm.safetensors")[0], load_checkpoint(run.ldm)[0]
    assert all(torch.equal(v, original["ema"][k]) for k, v in rebuilt["ema"].items() if torch.is_tensor(v))  # same latents


def test_resume_with_a_checkpoint_of_another_config(run, tmp_path, capsys):
    runs = _copy_run(run, tmp_path)
    argv = ["--config", SMOKE, "--runs", runs, "--stage", "vae", "--force", "vae", "--resume", *FAST, "vae.base_channels=16"]
    code, _, err = call(capsys, train.main, argv)
    assert_refused(code, err, ["vae-train-step0000001.safetensors", "cannot resume", "does not fit this model"])


# ------------------------------------------------------------------------------------ python -m data.synthetic

@pytest.mark.slow
def test_synthetic_cli_refuses_bad_arguments_through_python_m(tmp_path):
    (tmp_path / "file").write_text("x")
    for args, fragment in ((["--out", tmp_path / "file", "--n", "2"], "not a directory"),
                           (["--out", tmp_path / "c", "--n", "2", "--shape", "32", "32", "0"], "shape")):
        result = subprocess.run([sys.executable, "-m", "data.synthetic", *map(str, args)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120, check=False)
        assert_refused(result.returncode, result.stderr, [fragment])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
def test_train_bad_input_through_the_real_script(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--config", SMOKE, "--runs", str(tmp_path / "runs"),
                             "name=.."], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert_refused(result.returncode, result.stderr, ["name", "not only dots"])
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- numerical faults

def test_exploding_loss_exits_3_naming_step_and_a_loadable_checkpoint(run, tmp_path, capsys):
    runs = _copy_run(run, tmp_path)
    argv = ["--config", SMOKE, "--runs", runs, "--stage", "ldm", "--force", "ldm", *FAST,
            "ldm_train.lr=1e30", "ldm_train.steps=4", "ldm_train.warmup_steps=1"]
    code, _, err = call(capsys, train.main, argv)
    line = assert_refused(code, err, ["ldm-train: non-finite loss", "at step 1", "last good checkpoint:",
                                      "ldm-train-step0000001.safetensors"], exit_code=3)
    last_good = Path(line.split("last good checkpoint: ")[1].strip())
    states, meta = load_checkpoint(last_good, expect_stage="ldm-train")
    assert meta["step"] == 1 and all(torch.isfinite(v).all() for v in states["model"].values() if torch.is_tensor(v))
    assert not (runs / "smoke" / "ldm" / "ldm-train-step0000002.safetensors").exists()
    assert (runs / "smoke" / "ldm.safetensors").read_bytes() == run.ldm.read_bytes()  # the finished model is untouched


def _unet_overfit(precision: str, folder: Path) -> list[float]:
    """The tiny-UNet overfit of tests/test_unet.py, through the shared training loop -> per-step losses."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=4, out_channels=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_levels=(False, True), num_heads=2, context_dim=8))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([50, 300, 600, 900])
    alpha_bar = torch.cos(t / 1000 * math.pi / 2).pow(2)[:, None, None, None]
    x_t, context = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise, torch.randn(4, 5, 8, generator=g)
    cfg = TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=1, checkpoint_every=100, log_every=1,
                      precision=precision)
    train_loop(stage="unet", model=model, num_samples=4, cfg=cfg, run_dir=folder, meta={},
               loss_fn=lambda idx, gen, step: (F.mse_loss(model(x_t[idx], t[idx], context[idx]).float(), noise[idx]), {}))
    return [json.loads(line)["loss"] for line in (folder / "unet-metrics.jsonl").read_text().splitlines()]


def _vae_fit(precision: str, folder: Path) -> list[float]:
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(base_channels=8, channel_mult=(1, 2), latent_channels=4, attention_in_mid=False))
    x = torch.rand(4, 2, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def loss_fn(idx, gen, step):
        posterior = vae.encode(x[idx])
        return vae_loss(x[idx], vae.decode(posterior.mean).float(), posterior, vae.cfg)[0], {}

    cfg = TrainConfig(steps=20, batch_size=4, lr=2e-3, warmup_steps=1, checkpoint_every=100, log_every=1,
                      precision=precision)
    train_loop(stage="vae", model=vae, num_samples=4, cfg=cfg, run_dir=folder, meta={}, loss_fn=loss_fn)
    return [json.loads(line)["loss"] for line in (folder / "vae-metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("fit, fall", [(_unet_overfit, 5.0), (_vae_fit, 1.5)])
def test_bf16_training_keeps_the_fp32_behaviour(tmp_path, fit, fall):
    fp32, bf16 = fit("fp32", tmp_path / "fp32"), fit("bf16", tmp_path / "bf16")
    for losses in (fp32, bf16):
        assert all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0] / fall, losses  # the loss falls as in fp32 ...
    assert 0.5 < bf16[-1] / fp32[-1] < 2.0, (bf16[-1], fp32[-1])  # ... to about the same value
    assert bf16 != fp32  # autocast really ran in bf16
