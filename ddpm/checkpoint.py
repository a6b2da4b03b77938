"""Checkpoints as single safetensors files: tensors plus JSON metadata, written atomically.

safetensors holds no code, so loading a checkpoint can never execute a pickled payload.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from data.atomic import atomic_write
from data.errors import InputError, check_regular_file

FORMAT = "cardiac-ldm/1"
MODEL_STAGES = ("vae", "ldm", "controlnet")  # final checkpoints: a model is built from their embedded config
WEIGHT_GROUPS = ("model", "ema")


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


def first_non_finite(state: dict[str, torch.Tensor]) -> Optional[str]:
    """Name of the first floating-point tensor holding NaN/Inf (None when all are finite)."""
    for key, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


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


def _json_field(header: dict, key: str, path: Path, default: Optional[str] = None) -> dict:
    """One JSON-object field of the safetensors header (meta, extras), or one clear error."""
    text = header.get(key, default)
    if text is None:
        raise InputError(path, f"checkpoint metadata has no {key!r} field; expected a JSON object")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InputError(path, f"checkpoint metadata {key!r} is not valid JSON ({type(err).__name__}: "
                               f"{str(err)[:80]})") from None
    if not isinstance(value, dict):
        raise InputError(path, f"checkpoint metadata {key!r} is a JSON {type(value).__name__}; expected an object")
    return value


def _check_meta(meta: dict, path: Path, expect_stage: Optional[str]) -> None:
    """The fields other code reads from the metadata, typed (a malformed one is one line, not a traceback)."""
    if expect_stage is not None and meta.get("stage") != expect_stage:
        raise InputError(path, f"checkpoint of stage {str(meta.get('stage'))[:40]!r}; expected a {expect_stage!r} "
                               "checkpoint")
    if "step" in meta and (type(meta["step"]) is not int or meta["step"] < 0):
        raise InputError(path, f"checkpoint metadata 'step' is {str(meta['step'])[:40]!r}; expected an integer >= 0")
    if expect_stage in MODEL_STAGES and not isinstance(meta.get("config"), dict):
        raise InputError(path, "checkpoint metadata has no 'config' object; expected the run config the model was "
                               "trained with (models are built from it)")


def _check_tensors(flat: dict[str, torch.Tensor], path: Path) -> None:
    """Names are '<group>.<key>'; model weights are floating point (an int32 copy would load silently cast) and
    finite (NaN weights would write NaN samples)."""
    for name, tensor in flat.items():
        group = name.split(".", 1)[0]
        if "." not in name:
            raise InputError(path, f"tensor name {name[:60]!r}; expected '<group>.<key>' as save_checkpoint writes")
        if group in WEIGHT_GROUPS and not tensor.is_floating_point() and not name.endswith(".num_batches_tracked"):
            raise InputError(path, f"tensor {name[:80]} has dtype {str(tensor.dtype).replace('torch.', '')}; "
                                   "expected floating-point weights")
    if (bad := first_non_finite(flat)) is not None:
        raise InputError(path, f"tensor {bad[:80]} holds NaN/Inf; the checkpoint is broken (expected finite values); "
                               "use an earlier checkpoint")


def _read(path: Path, expect_stage: Optional[str], tensors: bool) -> tuple[dict, dict, dict]:
    """-> (meta, extras, flat tensors or {}). Refuses anything that is not our safetensors format, metadata that is
    not what save_checkpoint writes, and weights that are not finite floating point."""
    check_regular_file(path, "a safetensors checkpoint", missing="checkpoint not found")
    try:
        header = _read_header(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(path, f"not a cardiac-ldm safetensors checkpoint (refusing to unpickle anything): {err}") from None
    if header.get("format") != FORMAT:
        raise InputError(path, f"checkpoint format {str(header.get('format'))[:40]!r}; expected {FORMAT!r}")
    meta = _json_field(header, "meta", path)
    extras = _json_field(header, "extras", path, default="{}")
    _check_meta(meta, path, expect_stage)
    if not tensors:
        return meta, extras, {}
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(path, f"not a cardiac-ldm safetensors checkpoint (refusing to unpickle anything): {err}") from None
    _check_tensors(flat, path)
    return meta, extras, flat


def read_meta(path: str | Path, expect_stage: Optional[str] = None) -> dict:
    """A checkpoint's metadata (config, stage, parents' sha256) without reading its tensors."""
    return _read(Path(path), expect_stage, tensors=False)[0]


def load_checkpoint(path: str | Path, expect_stage: Optional[str] = None) -> tuple[dict[str, dict], dict]:
    """Inverse of save_checkpoint -> (states, meta); the checks are _read's."""
    meta, extras, flat = _read(Path(path), expect_stage, tensors=True)
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
