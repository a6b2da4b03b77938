"""bench/gpu_check.py: the memory search on a closed form, and the whole check in its reduced CPU form (so the GPU
command cannot rot), run the way the GPU machine runs it: without diffusers, MONAI or torchvision importable."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_check import largest_batch, main

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9


def test_largest_batch_search_on_an_affine_peak():
    calls = []

    def peak(b):  # 1 GB fixed + 0.5 GB a sample
        calls.append(b)
        return (1 + 0.5 * b) * GB

    r = largest_batch(peak, [12 * GB, 24 * GB], start=8, cap=256)
    assert calls == [8, 16, 32, 64]  # stops at the first batch past the largest limit
    assert r["fits"] == {12 * GB: 16, 24 * GB: 32}
    assert r["estimate"] == {12 * GB: 22, 24 * GB: 46}  # (limit - 1) / 0.5: exact for an affine peak
    capped = largest_batch(peak, [24 * GB], start=8, cap=16)
    assert list(capped["tried"]) == [8, 16] and capped["estimate"][24 * GB] == 46
    oom = largest_batch(lambda b: float("inf") if b >= 16 else 5 * GB, [12 * GB], start=8, cap=256)
    assert oom["fits"] == {12 * GB: 8} and oom["estimate"] == {12 * GB: None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda_is_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "out").exists()


BLOCK = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"diffusers", "monai", "torchvision", "open_clip"}:
            raise ImportError(f"{name} is not on the GPU machine")
sys.meta_path.insert(0, Block())
sys.argv = ["bench/gpu_check.py"] + sys.argv[1:]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_reduced_check_runs_on_cpu_without_diffusers(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", BLOCK, "--device", "cpu", "--tiny", "--warmup", "0", "--iters", "1", "--sample-iters", "1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((out / "gpu_check.json").read_text())
    for stage in ("vae", "ldm", "controlnet"):
        p = r["parity"][stage]
        # bf16 autocast really ran (losses differ) and stays close to fp32 from the same init and batches
        assert 0 < p["max_rel_loss_diff"] < 0.05, (stage, p)
        assert p["fp32"]["step_s"] > 0 and p["bf16"]["step_s"] > 0
    assert r["attention"]["default_ops"] and r["attention"]["forced"]["MATH"]["ok"]
    assert r["sampling"]["finite"] and r["sampling"]["bf16_vs_fp32_mean_abs"] < 0.1
    assert "skipped" in r["memory"] and "diffusers not importable" in r["diffusers"]["skipped"]
    assert "## SDPA" in (out / "gpu_check.md").read_text() and "## SDPA" in done.stdout
