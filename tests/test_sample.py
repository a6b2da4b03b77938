import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sample
import train
from data.cohort import MYO
from data.mask_input import load_control_masks
from data.nifti import load_nifti, save_nifti
from data.plan_csv import load_plan
from ddpm.checkpoint import file_sha256

SIZE, CROP = 32, 128.0  # configs/smoke.yaml
FAST = ["vae_train.steps=1", "vae_train.checkpoint_every=1", "ldm_train.steps=1", "ldm_train.checkpoint_every=1",
        "controlnet_train.steps=1", "controlnet_train.checkpoint_every=1", "data.synthetic_n=12", "sample.steps=2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One minimal trained run (VAE + LDM + ControlNet, 1 step each) shared by every test of this file."""
    runs = tmp_path_factory.mktemp("runs")
    config = Path(train.__file__).resolve().parent / "configs" / "smoke.yaml"
    assert train.main(["--config", str(config), "--runs", str(runs), "--stage", "controlnet", *FAST]) == 0
    return runs / "smoke"


@pytest.fixture(scope="session")
def subject_masks(tiny_run):
    folder = tiny_run / "cohort" / "1000001"
    return folder / "seg_sa_ED.nii.gz", folder / "seg_sa_ES.nii.gz"


def run_cli(capsys, *argv):
    code = sample.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image_of(out, sample_id):
    return load_nifti(out / f"{sample_id}.nii.gz")[0]


def test_writes_every_output(tiny_run, subject_masks, tmp_path, capsys):
    ed, es = subject_masks
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "--run", tiny_run, "--sex", "F", "--age", 47, "--bmi", 22, "--health",
                                "heart_failure", "--mask", ed, "--mask-es", es, "--n", 2, "--out", out)
    assert code == 0, err
    assert "2 generated" in stdout
    image, affine, spacing = load_nifti(out / "sample-000.nii.gz")
    assert image.shape == (SIZE, SIZE, 2) and np.all(np.abs(image) <= 1.0)
    assert np.allclose(affine, np.diag([CROP / SIZE, CROP / SIZE, 1.0, 1.0]))
    mask = load_nifti(out / "sample-000_mask.nii.gz", is_mask=True)[0]
    from run.config import load_run_config
    cfg = load_run_config(str(tiny_run / "config.yaml"))
    assert np.array_equal(np.moveaxis(mask, -1, 0), load_control_masks(ed, es, cfg.data.preprocess))
    assert Image.open(out / "sample-001.png").size == (2 * SIZE, SIZE)  # ED | ES
    assert (out / "grid.png").is_file()
    sidecar = json.loads((out / "sample-001.json").read_text())
    assert sidecar["prompt"] == "Female, age in 40s, normal BMI, heart failure" and sidecar["seed"] == 1
    assert sidecar["settings"]["steps"] == 2  # the run config's default
    for name in ("vae", "ldm", "controlnet"):
        assert sidecar["checkpoints"][name]["sha256"] == file_sha256(tiny_run / f"{name}.safetensors")
    assert sidecar["mask_source"]["ed"] == str(ed)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"sample-00{i}{s}" for i in range(2) for s in (".nii.gz", "_mask.nii.gz", ".png", ".json")] + ["grid.png"])


def test_seeds_are_per_sample_and_deterministic(tiny_run, subject_masks, tmp_path, capsys):
    ed, _ = subject_masks
    common = ["--run", tiny_run, "--prompt", "Male, age in 60s, obese BMI, healthy", "--mask", ed]
    code, _, err = run_cli(capsys, *common, "--n", 2, "--seed", 3, "--out", tmp_path / "a")
    assert code == 0 and "warning: no ES mask given" in err  # one line, not a Python warning dump
    assert run_cli(capsys, *common, "--n", 2, "--seed", 3, "sample.batch_size=1", "--out", tmp_path / "b")[0] == 0
    assert run_cli(capsys, *common, "--seed", 4, "--out", tmp_path / "c")[0] == 0
    a0, a1 = image_of(tmp_path / "a", "sample-000"), image_of(tmp_path / "a", "sample-001")
    assert np.allclose(a0, image_of(tmp_path / "b", "sample-000"), atol=1e-5)  # same seed, other batching
    assert np.allclose(a1, image_of(tmp_path / "c", "sample-000"), atol=1e-5)  # sample 1 of seed 3 = seed 4
    assert np.abs(a0 - a1).max() > 0.05  # different seeds differ


def test_ldm_alone_without_mask(tiny_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--run", tiny_run, "--prompt", "Female, healthy", "--out", tmp_path)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "sample-000.json").read_text())
    assert sidecar["checkpoints"]["controlnet"] is None and "mask" not in sidecar["files"]
    assert not (tmp_path / "sample-000_mask.nii.gz").exists() and (tmp_path / "sample-000.nii.gz").is_file()


def test_plan_batch_resumes_without_duplicates_or_losses(tiny_run, tmp_path, capsys):
    plan_path, out = tmp_path / "plan.csv", tmp_path / "out"
    code, stdout, err = run_cli(capsys, "--run", tiny_run, "--make-plan", plan_path, "plan.mode=min_count",
                                "plan.min_count=1", "plan.max_total=5", "--seed", 1)
    assert code == 0, err
    plan = load_plan(plan_path)
    assert len(plan) == 5 and "plan: 5 samples" in stdout
    train_ids = set(json.loads((tiny_run / "split.json").read_text())["train"])
    assert set(plan["mask_subject_id"]) <= train_ids  # geometry only from the training split
    code, stdout, err = run_cli(capsys, "--run", tiny_run, "--plan", plan_path, "--out", out, "sample.batch_size=2")
    assert code == 0, err
    first = {sid: image_of(out, sid) for sid in plan["sample_id"]}
    (out / f"{plan['sample_id'][0]}.json").unlink()  # interrupted before the sidecar
    (out / f"{plan['sample_id'][3]}.nii.gz").unlink()  # output lost after completion
    code, stdout, err = run_cli(capsys, "--run", tiny_run, "--plan", plan_path, "--out", out, "sample.batch_size=2")
    assert code == 0, err
    assert "2 generated, 3 already complete" in stdout
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"{sid}{s}" for sid in plan["sample_id"] for s in (".nii.gz", "_mask.nii.gz", ".png", ".json")]
                      + ["grid.png"])
    assert names == expected  # each sample exactly once, no temp files left
    for sid, image in first.items():
        assert np.allclose(image_of(out, sid), image, atol=1e-5)
    for row in plan.itertuples():
        sidecar = json.loads((out / f"{row.sample_id}.json").read_text())
        assert sidecar["mask_source"]["subject_id"] == row.mask_subject_id and sidecar["seed"] == row.seed
    code, _, err = run_cli(capsys, "--run", tiny_run, "--plan", plan_path, "--out", out, "sample.steps=3")
    assert code == 2 and "different settings" in err  # never silently mixes outputs of other settings


def test_plan_rows_with_mask_files_and_jitter(tiny_run, subject_masks, tmp_path, capsys):
    ed, es = subject_masks
    (tmp_path / "masks").mkdir()
    for src in (ed, es):
        (tmp_path / "masks" / src.name).write_bytes(src.read_bytes())
    rows = ["sample_id,sex,age,bmi,health,prompt,mask_subject_id,mask_row,seed,jitter,mask_path,mask_es_path"]
    for sid, jitter in (("plain", 0), ("moved", 1)):
        rows.append(f'{sid},female,47,22,heart_failure,"Female, age in 40s, normal BMI, heart failure",,,7,{jitter},'
                    f"masks/{ed.name},masks/{es.name}")
    (tmp_path / "plan.csv").write_text("\n".join(rows) + "\n")
    code, _, err = run_cli(capsys, "--plan", tmp_path / "plan.csv", "--vae", tiny_run / "vae.safetensors", "--ldm",
                           tiny_run / "ldm.safetensors", "--controlnet", tiny_run / "controlnet.safetensors",
                           "--out", tmp_path / "out")  # explicit checkpoints, no run folder
    assert code == 0, err
    plain, moved = (np.moveaxis(load_nifti(tmp_path / "out" / f"{sid}_mask.nii.gz", is_mask=True)[0], -1, 0)
                    for sid in ("plain", "moved"))
    from run.config import load_run_config
    cfg = load_run_config(str(tiny_run / "config.yaml"))
    assert np.array_equal(plain, load_control_masks(ed, es, cfg.data.preprocess))  # resolved from the plan's folder
    assert not np.array_equal(plain, moved) and set(np.unique(moved)) <= {0, 1, 2, 3}  # jitter=1 moved the geometry
    assert json.loads((tmp_path / "out" / "moved.json").read_text())["mask_source"]["jitter"] == 1


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line(tiny_run, subject_masks, tmp_path, capsys):
    ed, es = subject_masks
    base = ["--run", tiny_run, "--out", tmp_path / "out"]
    _assert_one_line_error(*run_cli(capsys, *base, "--health", "flu")[::2], "health", "flu", "heart_failure")
    _assert_one_line_error(*run_cli(capsys, *base, "--prompt", "Female, flu")[::2], "prompt", "heart failure")
    _assert_one_line_error(*run_cli(capsys, *base, "--sex", "X")[::2], "sex", "female/male")
    _assert_one_line_error(*run_cli(capsys, "--run", tmp_path / "nope", "--prompt", "Female")[::2], "run folder not found")
    mask, affine, _ = load_nifti(ed, is_mask=True)
    save_nifti(tmp_path / "labels.nii.gz", np.where(mask == MYO, 6, mask), affine)
    _assert_one_line_error(*run_cli(capsys, *base, "--prompt", "Female", "--mask", tmp_path / "labels.nii.gz",
                                    "--mask-es", es)[::2], "labels.nii.gz", "[6]", "ukbb")
    save_nifti(tmp_path / "empty.nii.gz", np.zeros_like(mask), affine)
    _assert_one_line_error(*run_cli(capsys, *base, "--prompt", "Female", "--mask", tmp_path / "empty.nii.gz",
                                    "--mask-es", es)[::2], "empty.nii.gz", "empty")
    save_nifti(tmp_path / "half.nii.gz", mask[:40], affine)
    _assert_one_line_error(*run_cli(capsys, *base, "--prompt", "Female", "--mask", ed,
                                    "--mask-es", tmp_path / "half.nii.gz")[::2], "half.nii.gz", "shape mismatch")
    _assert_one_line_error(*run_cli(capsys, *base, "--prompt", "Female", "sample.steps=many")[::2], "sample.steps")
    _assert_one_line_error(*run_cli(capsys, *base, "--prompt", "Female", "unet.base_channels=8")[::2],
                           "unet.base_channels", "reads only sample, plan, device")
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_help(capsys):
    assert sample.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--plan", "--mask-es", "--labels", "sample.steps", "--make-plan"):
        assert option in text


def test_sample_settings_spacing_and_legacy_sidecars(tmp_path):
    """Spacing is a checked setting; a sidecar written before it existed was made with leading spacing, offset 0."""
    from ddpm.sampling import SampleSettings
    from run.samples import LEGACY_SETTINGS, SampleRequest, _identity, is_complete
    from data.errors import InputError

    for bad in ({"spacing": "middle"}, {"steps_offset": -1}, {"precision": "fp16"}):
        with pytest.raises(InputError, match="spacing|steps_offset|precision"):
            SampleSettings(**bad)
    request, checkpoints = SampleRequest("s0", "Female, healthy", 3), {"ldm": None}
    old = SampleSettings(**LEGACY_SETTINGS)
    sidecar = {**_identity(request, old, checkpoints), "files": {"png": "s0.png"}}
    for key in LEGACY_SETTINGS:
        del sidecar["settings"][key]
    (tmp_path / "s0.png").write_bytes(b"")
    (tmp_path / "s0.json").write_text(json.dumps(sidecar))
    assert is_complete(tmp_path, request, old, checkpoints)
    with pytest.raises(InputError, match="different settings"):
        is_complete(tmp_path, request, SampleSettings(spacing="linspace"), checkpoints)


def test_bf16_sampling_is_close_to_fp32(tiny_run, subject_masks, tmp_path, capsys):
    ed, es = subject_masks
    images = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = run_cli(capsys, "--run", tiny_run, "--prompt", "Female, age in 40s, normal BMI, healthy",
                               "--mask", ed, "--mask-es", es, "--out", out, f"sample.precision={precision}")
        assert code == 0, err
        assert json.loads((out / "sample-000.json").read_text())["settings"]["precision"] == precision
        images[precision] = image_of(out, "sample-000")
    diff = np.abs(images["bf16"] - images["fp32"])
    assert np.isfinite(images["bf16"]).all() and 0 < diff.mean() < 0.05  # autocast ran, and stayed close
