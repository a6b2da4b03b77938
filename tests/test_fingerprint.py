"""bench/fingerprint.py: equal runs fingerprint equal wherever they live; any changed weight or number shows."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.fingerprint import fingerprint


def _run(root: Path, weight: float, meta_order: tuple[str, ...], sec: float) -> Path:
    root.mkdir(parents=True)
    meta = {key: json.dumps({"step": 3, "parent": f"{root}/vae.safetensors"}) if key == "meta" else "x"
            for key in meta_order}
    save_file({"model.w": torch.full((2, 2), weight)}, str(root / "ldm.safetensors"), metadata=meta)
    (root / "metrics.json").write_text(json.dumps({"dice": 0.5, "sec": sec, "sha256": "0123456789ab",
                                                   "out": f"{root}/evaluation"}))
    (root / "timings.json").write_text(json.dumps({"vae": sec}))
    return root


def test_equal_runs_in_two_folders_fingerprint_equal(tmp_path):
    a = fingerprint(_run(tmp_path / "a", 1.0, ("meta", "format"), sec=1.5))
    b = fingerprint(_run(tmp_path / "b", 1.0, ("format", "meta"), sec=9.0))  # other header order, other clock
    assert a == b and len(a) == 2  # timings.json is skipped


def test_a_changed_weight_changes_the_fingerprint(tmp_path):
    a = fingerprint(_run(tmp_path / "a", 1.0, ("meta",), sec=1.0))
    b = fingerprint(_run(tmp_path / "b", 1.0 + 2 ** -20, ("meta",), sec=1.0))
    assert [line for line in a if line.endswith("ldm.safetensors")] != \
           [line for line in b if line.endswith("ldm.safetensors")]
