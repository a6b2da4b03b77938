"""What each finished stage consumed and produced, by sha256, so that no stage trusts a stale input.

`runs/<name>/provenance.json` maps a stage to {file in the run folder: sha256} of the files it read and the files
it wrote that later stages read, hashed when it finished. Before a stage's output is reused (skipped as done) or
read by a later stage, `verify_stage` checks every recorded file still has that hash: a plan.csv remade after its
samples were generated, or a checkpoint replaced after the evaluation ran, is one InputError naming the file.
(The trained stages carry their parent's sha256 in the checkpoint itself; run/stages.py checks that.)
"""
from __future__ import annotations

import json
from pathlib import Path

from data.atomic import atomic_write_bytes
from data.errors import InputError
from ddpm.checkpoint import file_sha256

RECORD = "provenance.json"
CHECKPOINT_FILES = ("vae.safetensors", "ldm.safetensors", "controlnet.safetensors")
# Files of the run folder each downstream stage reads or writes for the stages after it.
STAGE_FILES = {
    "plan": CHECKPOINT_FILES + ("plan.csv",),
    "evaluation": CHECKPOINT_FILES + ("plan.csv", "samples.json"),  # it also evaluates the plan's samples
    "experiment": ("plan.csv", "samples.json"),
}


def _read(run_dir: Path) -> dict:
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(path, f"unreadable provenance record ({error}); expected JSON written by train.py") from None
    if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
        raise InputError(path, "expected a JSON object {stage: {file: sha256}}")
    return record


def _hashes(run_dir: Path, names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: file_sha256(Path(run_dir) / name) if (Path(run_dir) / name).is_file() else None for name in names}


def forget_stage(run_dir: Path, stage: str) -> None:
    """Before a stage reruns: a run killed halfway must not leave the old record vouching for new files."""
    record = _read(run_dir)
    if stage in record:
        del record[stage]
        atomic_write_bytes(Path(run_dir) / RECORD, json.dumps(record, indent=1).encode())


def record_stage(run_dir: Path, stage: str) -> None:
    """After a stage finished: the sha256 of the files it consumed and produced for the stages after it."""
    if stage not in STAGE_FILES:
        return
    record = _read(run_dir)
    record[stage] = _hashes(run_dir, STAGE_FILES[stage])
    atomic_write_bytes(Path(run_dir) / RECORD, json.dumps(record, indent=1).encode())


def verify_stage(run_dir: Path, stage: str) -> None:
    """InputError when a file a finished stage recorded has changed since (or vanished)."""
    run_dir = Path(run_dir)
    recorded = _read(run_dir).get(stage)
    if recorded is None:
        recorded = _legacy_record(run_dir, stage)
    now = _hashes(run_dir, tuple(recorded))
    for name, then in recorded.items():
        if then != now[name]:
            found = "is missing" if now[name] is None else f"now has sha256 {now[name]}"
            raise InputError(run_dir / name, f"the {stage} stage used this file with sha256 {then}, but it {found} "
                                             f"(changed since); expected the same file: use --force {stage} to redo it")


def _legacy_record(run_dir: Path, stage: str) -> dict[str, str | None]:
    """Runs from before provenance.json: samples.json itself records the plan it was generated from."""
    if stage != "plan" or not (run_dir / "samples.json").is_file():
        return {}
    try:
        manifest = json.loads((run_dir / "samples.json").read_text())
        return {"plan.csv": str(manifest["plan_sha256"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(run_dir / "samples.json", f"unreadable samples manifest ({error}); expected JSON with "
                                                   "plan_sha256: use --force plan") from None
