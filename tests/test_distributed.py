"""Data-parallel training: N processes at a global batch train what one process trains at that batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.errors import InputError
from ddpm.checkpoint import load_checkpoint, model_state
from ddpm.distributed import Ranks, resolve_device
from ddpm.trainer import StepDraws

ROOT = Path(__file__).resolve().parents[1]


def test_shards_of_the_draws_put_together_are_the_single_process_draws():
    def draws(rows):
        d = StepDraws(torch.Generator().manual_seed(3), 6, rows)
        b = rows.stop - rows.start
        return d.randint(1000, (b,)), d.randn((b, 2, 4, 4)), d.rand((b,))

    whole = draws(slice(0, 6))
    halves = [draws(Ranks(rank, 2).rows(6)) for rank in range(2)]
    thirds = [draws(Ranks(rank, 3).rows(6)) for rank in range(3)]
    for parts in (halves, thirds):
        for i, full in enumerate(whole):
            assert torch.equal(torch.cat([p[i] for p in parts]), full)
    with pytest.raises(ValueError, match="rows"):
        StepDraws(torch.Generator(), 6, slice(0, 3)).randn((6, 2))


def test_global_batch_must_split_evenly():
    assert Ranks(1, 4).rows(8) == slice(2, 4)
    with pytest.raises(InputError, match="divisible by the number of processes"):
        Ranks(0, 3).rows(8)


def test_resolve_device_names_the_field_for_unknown_or_absent_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="sample.device.*unknown device 'tpu'"):
        resolve_device("tpu", "sample.device")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="'cuda:1' requested but CUDA is not available here; use device=cpu"):
            resolve_device("cuda:1")


def _train(runs: Path, nproc: int, stage: str = "controlnet", steps: int = 4, extra: tuple = ()) -> Path:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    # Global batch 4 in every stage (2 rows per process with two processes).
    cmd = launcher + ["train.py", "--stage", stage, "--config", "configs/smoke.yaml", "--runs", str(runs), *extra,
                      "data.synthetic_n=12", "data.synthetic_test_n=4", f"vae_train.steps={steps}",
                      f"ldm_train.steps={steps}", f"controlnet_train.steps={steps}"]
    # No warm-up and a large lr: each step moves weights by ~1e-3 (Adam), so unsynced gradients would show.
    cmd += [f"{stage}_train.{key}" for stage in ("vae", "ldm", "controlnet") for key in ("lr=1e-3", "warmup_steps=1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return runs / "smoke"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return model_state(load_checkpoint(path)[0], "model")


@pytest.mark.slow  # trains through torchrun subprocesses
def test_torchrun_two_processes_equal_one_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU) vs one process: every stage's weights and logged losses agree."""
    one, two = _train(tmp_path / "one", 1), _train(tmp_path / "two", 2)
    for stage in ("vae", "ldm", "controlnet"):
        final = f"{stage}/{stage}-train-final.safetensors"
        a, b = _weights(one / final), _weights(two / final)
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        # float32 all-reduce order, amplified by 4 Adam steps: measured 3.2e-5 (controlnet) since the latent scale
        # whitens posterior samples (< 2e-5 before); an unsynced gradient moves weights by ~1e-3 (the lr)
        assert worst < 1e-4, f"{stage}: weights differ by {worst}"
        logs = [[json.loads(line) for line in (run / stage / f"{stage}-train-metrics.jsonl").read_text().splitlines()]
                for run in (one, two)]
        assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] and logs[0]
        for r1, r2 in zip(*logs):  # the logged loss is the global batch's mean on both sides
            assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-4), (stage, r1, r2)
    # Rank 0 alone wrote the run: one metrics log line per logged step, one checkpoint set, the stage outputs.
    assert sorted(p.name for p in (two / "vae").glob("*.safetensors")) == \
        sorted(p.name for p in (one / "vae").glob("*.safetensors"))
    for name in ("vae.safetensors", "ldm.safetensors", "controlnet.safetensors", "controlnet_samples.png"):
        assert (two / name).is_file(), name


@pytest.mark.slow  # trains through torchrun subprocesses
def test_torchrun_resume_continues_like_an_uninterrupted_run(tmp_path):
    """Two processes stopped after 2 steps, resumed to 4 (--resume): the weights of one process trained 4 steps."""
    whole = _train(tmp_path / "one", 1, stage="vae")
    two = _train(tmp_path / "two", 2, stage="vae", steps=2)
    two = _train(tmp_path / "two", 2, stage="vae", steps=4, extra=("--resume", "--force", "vae"))
    final = "vae/vae-train-final.safetensors"
    meta = load_checkpoint(two / final)[1]
    assert meta["step"] == 4 and meta["resumed_from"] == 2  # it did continue, not start over
    a, b = _weights(whole / final), _weights(two / final)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-5


@pytest.mark.slow  # trains through torchrun subprocesses
def test_torchrun_refuses_a_batch_it_cannot_split_before_writing(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "--stage", "vae", "--config", "configs/smoke.yaml", "--runs", str(tmp_path), "ldm_train.batch_size=3"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "error: ldm_train.batch_size: the global batch 3 must be divisible by the number of processes (2)" \
        in done.stderr
    assert not any(tmp_path.iterdir())  # no run folder
