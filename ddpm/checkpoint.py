"""Checkpoints as single safetensors files: tensors plus JSON metadata, written atomically.

safetensors holds no code, so loading a checkpoint can never execute a pickled payload.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from data.atomic import atomic_write
from data.errors import InputError

FORMAT = "cardiac-ldm/1"


def flatten_state(prefix: str, state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a (nested) state dict into tensors (by dotted key) and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict = {}
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):
            sub_tensors, sub_rest = flatten_state(name, value)
            tensors.update(sub_tensors)
            if sub_rest:
                rest[str(key)] = sub_rest
        else:
            rest[str(key)] = value
    return tensors, rest


def save_checkpoint(path: str | Path, states: dict[str, dict], meta: dict[str, Any]) -> None:
    """states: {"model": sd, "ema": sd, "optimizer": sd, ...}; meta: JSON-able (config, step, stage)."""
    tensors: dict[str, torch.Tensor] = {}
    extras: dict = {}
    for group, state in states.items():
        group_tensors, rest = flatten_state(group, state)
        tensors.update(group_tensors)
        extras[group] = rest
    header = {"format": FORMAT, "meta": json.dumps(meta), "extras": json.dumps(extras)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _read_header(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _read(path: Path, expect_stage: str | None, tensors: bool) -> tuple[dict, dict, dict]:
    """-> (header, meta, flat tensors or {}); refuses anything that is not our safetensors format."""
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        header = _read_header(path)
        flat = load_file(str(path)) if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(path, f"not a cardiac-ldm safetensors checkpoint (refusing to unpickle anything): {err}") from None
    if header.get("format") != FORMAT:
        raise InputError(path, f"checkpoint format {header.get('format')!r}; expected {FORMAT!r}")
    meta = json.loads(header["meta"])
    if expect_stage is not None and meta.get("stage") != expect_stage:
        raise InputError(path, f"checkpoint of stage {meta.get('stage')!r}; expected a {expect_stage!r} checkpoint")
    return header, meta, flat


def read_meta(path: str | Path, expect_stage: str | None = None) -> dict:
    """A checkpoint's metadata (config, stage, parents' sha256) without reading its tensors."""
    return _read(Path(path), expect_stage, tensors=False)[1]


def load_checkpoint(path: str | Path, expect_stage: str | None = None) -> tuple[dict[str, dict], dict]:
    """Inverse of save_checkpoint -> (states, meta). Refuses anything that is not our safetensors format."""
    header, meta, flat = _read(Path(path), expect_stage, tensors=True)
    extras = json.loads(header.get("extras", "{}"))
    states: dict[str, dict] = {}
    for name, tensor in flat.items():
        group, key = name.split(".", 1)
        states.setdefault(group, {})[key] = tensor
    for group, rest in extras.items():
        states.setdefault(group, {})
        states[group]["__extras__"] = rest
    return states, meta


def model_state(states: dict[str, dict], group: str) -> dict[str, torch.Tensor]:
    """A plain module state dict from a loaded checkpoint group."""
    return {k: v for k, v in states.get(group, {}).items() if k != "__extras__"}


def optimizer_state(states: dict[str, dict], group: str = "optimizer") -> dict:
    """Rebuild a torch optimizer state dict saved by save_checkpoint."""
    flat = states[group]
    extras = flat.get("__extras__", {})
    state: dict[int, dict] = {}
    for key, tensor in flat.items():
        if key == "__extras__":
            continue
        _, index, name = key.split(".", 2)  # "state.<param index>.<name>"
        state.setdefault(int(index), {})[name] = tensor
    for index, rest in extras.get("state", {}).items():
        state.setdefault(int(index), {}).update(rest)
    return {"state": state, "param_groups": extras["param_groups"]}


def file_sha256(path: str | Path, length: int = 12) -> str:
    """Short content hash, recorded in sample sidecars so outputs name the exact checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
