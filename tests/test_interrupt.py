"""Interrupted runs, for real: training and batch sampling run in a subprocess that SIGKILLs itself at a chosen
point (inside an optimizer step, halfway through writing a checkpoint or a NIfTI), then are resumed. The resumed
run must reach exactly the uninterrupted result: same weights, same metrics log, every sample once."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
import train
from data.errors import InputError
from data.nifti import load_nifti
from data.plan_csv import load_plan
from ddpm.checkpoint import load_checkpoint
from ddpm.trainer import checkpoint_paths
from evaluation.image_sets import load_sample_folder

pytestmark = pytest.mark.slow  # every test here trains through subprocesses

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# 8 VAE steps with a checkpoint every 2 and only the newest kept: the harshest keep-last-N setting.
OVERRIDES = ["vae_train.steps=8", "vae_train.checkpoint_every=2", "vae_train.keep_last=1", "ldm_train.steps=1",
             "ldm_train.checkpoint_every=1", "controlnet_train.steps=1", "controlnet_train.checkpoint_every=1",
             "data.synthetic_n=8", "data.synthetic_test_n=4", "sample.steps=1"]
STAGES = ("vae", "ldm", "controlnet")

# Runs a script (train.py, sample.py) and SIGKILLs the process at the n-th call of one function: inside an
# optimizer step ("step"), or after writing half of the n-th safetensors / NIfTI file ("safetensors", "nifti").
# Nothing in the production code knows about it; the kill is real (no cleanup, no finally blocks run).
KILLER = r"""
import os, runpy, signal, sys
import torch
torch.set_num_threads(1)
mode, n, script, *args = sys.argv[1:]
calls = [0]

def kill_at_nth(write_half):
    calls[0] += 1
    if calls[0] == int(n):
        write_half()
        os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":
    clip = torch.nn.utils.clip_grad_norm_
    def clip_then_kill(*a, **k):
        kill_at_nth(lambda: None)
        return clip(*a, **k)
    torch.nn.utils.clip_grad_norm_ = clip_then_kill
elif mode == "safetensors":
    import safetensors.torch as st
    save_file = st.save_file
    def half_then_kill(tensors, filename, metadata=None):
        def write_half():
            data = st.save(tensors, metadata=metadata)
            with open(filename, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
        kill_at_nth(write_half)
        return save_file(tensors, filename, metadata=metadata)
    st.save_file = half_then_kill
elif mode == "nifti":
    import nibabel as nib
    save = nib.save
    def half_then_kill(image, filename):
        def write_half():
            save(image, filename)
            os.truncate(filename, os.path.getsize(filename) // 2)
        kill_at_nth(write_half)
        return save(image, filename)
    nib.save = half_then_kill
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def killed_run(mode: str, n: int, script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, mode, str(n), script, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    states, _ = load_checkpoint(path)
    return {f"{g}.{k}": v for g, s in states.items() for k, v in s.items() if torch.is_tensor(v)}


def metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "sec"} for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run; also the trained run the sampling test draws from."""
    torch.set_num_threads(1)  # as the killed runs: the same kernels, so equal results bit for bit
    runs = tmp_path_factory.mktemp("reference")
    assert train.main(["--config", SMOKE, "--runs", str(runs), "--stage", "controlnet", *OVERRIDES]) == 0
    return runs / "smoke"


def test_training_killed_twice_resumes_to_the_uninterrupted_weights(reference, tmp_path):
    runs = tmp_path / "runs"
    argv = ["--config", SMOKE, "--runs", runs, "--stage", "controlnet", *OVERRIDES]
    vae_dir = runs / "smoke" / "vae"

    # 1. SIGKILL inside the 5th optimizer step, after the step-4 checkpoint.
    result = killed_run("step", 5, "train.py", *argv)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert [p.name for p in checkpoint_paths(vae_dir, "vae-train")] == ["vae-train-step0000004.safetensors"]
    assert not (runs / "smoke" / "vae.safetensors").exists()

    # 2. Resume, SIGKILLed halfway through writing the step-6 checkpoint (the first safetensors it writes).
    result = killed_run("safetensors", 1, "train.py", *argv, "--resume")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    half = list(vae_dir.glob(".vae-train-step0000006.safetensors.*.tmp"))
    assert len(half) == 1, sorted(p.name for p in vae_dir.iterdir())
    with pytest.raises(InputError):
        load_checkpoint(half[0])  # really half a file
    only_good = checkpoint_paths(vae_dir, "vae-train")
    assert [p.name for p in only_good] == ["vae-train-step0000004.safetensors"]  # keep-last-1 kept the only good one
    assert load_checkpoint(only_good[0], expect_stage="vae-train")[1]["step"] == 4

    # 3. Resume to the end (a fresh call: all state comes from disk): the half file is never read, and the result
    #    is the uninterrupted run's, bit for bit.
    assert train.main([*map(str, argv), "--resume"]) == 0
    assert sorted(p.name for p in vae_dir.iterdir()) == ["vae-train-final.safetensors", "vae-train-metrics.jsonl",
                                                         "vae-train-step0000008.safetensors"]  # temp file cleaned up
    for stage in STAGES:
        resumed = tensors(runs / "smoke" / f"{stage}.safetensors")
        uninterrupted = tensors(reference / f"{stage}.safetensors")
        assert resumed.keys() == uninterrupted.keys()
        for key in resumed:
            assert torch.equal(resumed[key], uninterrupted[key]), f"{stage}: {key}"
    final = tensors(vae_dir / "vae-train-final.safetensors")  # model, EMA and AdamW state
    uninterrupted = tensors(reference / "vae" / "vae-train-final.safetensors")
    assert final.keys() == uninterrupted.keys() and all(torch.equal(final[k], uninterrupted[k]) for k in final)
    log = metrics(vae_dir / "vae-train-metrics.jsonl")
    assert [r["step"] for r in log] == [2, 4, 6, 8]  # replayed steps are logged once, not twice
    assert log == metrics(reference / "vae" / "vae-train-metrics.jsonl")


def test_batch_sampling_killed_mid_write_reruns_without_duplicates_or_losses(reference, tmp_path, capsys):
    plan_path = tmp_path / "plan.csv"
    assert sample.main(["--run", str(reference), "--make-plan", str(plan_path), "plan.mode=min_count",
                        "plan.min_count=1", "plan.max_total=6", "--seed", "1"]) == 0
    plan = load_plan(plan_path)
    ids = list(plan["sample_id"])
    assert len(ids) == 6
    common = ["--run", reference, "--plan", plan_path, "sample.batch_size=2"]
    assert sample.main([str(a) for a in [*common, "--out", tmp_path / "uninterrupted"]]) == 0
    out = tmp_path / "out"

    # SIGKILL halfway through the 6th NIfTI write: samples 0-1 are done, sample 2 has its image but half a mask.
    result = killed_run("nifti", 6, "sample.py", *common, "--out", out)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.json")) == [f"{i}.json" for i in ids[:2]]
    assert len(list(out.glob(f".{ids[2]}_mask.nii.gz.*"))) == 1  # the half-written temp file

    capsys.readouterr()
    assert sample.main([str(a) for a in [*common, "--out", out]]) == 0
    assert "4 generated, 2 already complete" in capsys.readouterr().out
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([f"{i}{s}" for i in ids for s in (".nii.gz", "_mask.nii.gz", ".png", ".json")] + ["grid.png"])
    for sample_id in ids:  # nothing lost, nothing different from the uninterrupted call
        assert np.allclose(load_nifti(out / f"{sample_id}.nii.gz")[0],
                           load_nifti(tmp_path / "uninterrupted" / f"{sample_id}.nii.gz")[0], atol=1e-5)
    loaded = load_sample_folder(out, progress=False)  # what evaluation reads: the temp file is no sample
    assert sorted(loaded.subject_ids) == sorted(plan["sample_id"]) and len(loaded.images) == 6
