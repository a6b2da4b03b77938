"""Batch sampling to disk: per-sample seeded generation, atomic outputs, resumable (a sidecar marks a sample done).

Per sample in the output folder: <id>.nii.gz (float32 (S, S, 2) ED/ES on the preprocessed grid), <id>_mask.nii.gz
(when mask-conditioned), <id>.png (ED | ES) and <id>.json, written LAST: its presence (with the files it lists)
means the sample is complete, so an interrupted call can be rerun and only the missing samples are generated.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from data.atomic import atomic_write_bytes, check_outputs_spare_inputs
from data.errors import InputError
from data.json_ready import json_ready
from data.mask_input import load_control_masks
from data.nifti import load_nifti, save_nifti
from data.plan_csv import sample_id_problem
from data.planner import jittered
from data.preprocess import config_hash
from data.prompts import canonical_prompt
from data.slices import SliceSet
from ddpm.checkpoint import file_sha256
from ddpm.images import save_grid, to_uint8
from ddpm.sampling import SampleSettings
from ddpm.trainer import autocast_context
from run.pipeline import Pipeline, generation_kwargs

GRID_LIMIT = 64  # grid.png shows at most this many samples of a call
SEED_LIMIT = 2 ** 64  # torch.Generator.manual_seed takes [0, 2^64)


@dataclass
class SampleRequest:
    """One sample to generate. mask: (2, S, S) uint8 internal labels, or None (LDM alone)."""

    sample_id: str
    prompt: str
    seed: int
    mask: Optional[np.ndarray] = None
    mask_source: dict = field(default_factory=dict)  # JSON-able: where the geometry came from
    extra: dict = field(default_factory=dict)  # JSON-able: e.g. the plan row's attributes


def checkpoint_record(paths: dict[str, Optional[Path]]) -> dict:
    """{name: path} -> {name: {path, sha256}} (None for an absent checkpoint), for the sidecars."""
    return {name: None if p is None else {"path": str(p), "sha256": file_sha256(p)} for name, p in paths.items()}


def grid_affine(cfg) -> np.ndarray:
    """Voxel -> mm of the preprocessed grid: crop_mm / size mm pixels, 1 mm 'slices' (ED, ES on the 3rd axis)."""
    pixel = cfg.data.preprocess.crop_mm / cfg.data.preprocess.size
    return np.diag([pixel, pixel, 1.0, 1.0])


def output_files(sample_id: str, has_mask: bool) -> dict[str, str]:
    files = {"image": f"{sample_id}.nii.gz", "png": f"{sample_id}.png"}
    if has_mask:
        files["mask"] = f"{sample_id}_mask.nii.gz"
    return files


def sidecar_path(out_dir: Path, sample_id: str) -> Path:
    return Path(out_dir) / f"{sample_id}.json"


# What sidecars written before a setting existed were made with (their code's fixed behaviour).
LEGACY_SETTINGS = {"spacing": "leading", "steps_offset": 0, "precision": "fp32", "guidance_interval": None,
                   "control_interval": None, "guidance_rescale": 0.0}


def _identity(request: SampleRequest, settings: SampleSettings, checkpoints: dict) -> dict:
    """What must match for an existing sample to count as this request (batch_size does not change outputs)."""
    chosen = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
    mask_sha = None if request.mask is None else hashlib.sha256(np.ascontiguousarray(request.mask, np.uint8)).hexdigest()[:16]
    return {"prompt": request.prompt, "seed": int(request.seed), "settings": chosen,
            "checkpoints": {k: None if v is None else v["sha256"] for k, v in checkpoints.items()},
            "mask_sha256": mask_sha}


def is_complete(out_dir: Path, request: SampleRequest, settings: SampleSettings, checkpoints: dict) -> bool:
    """True when the sidecar exists and all files it lists exist. InputError when it was made differently."""
    path = sidecar_path(out_dir, request.sample_id)
    if not path.is_file():
        return False
    try:
        sidecar = json.loads(path.read_text())
        files = sidecar["files"]
    except (ValueError, KeyError, TypeError):
        return False  # unreadable sidecar: regenerate the sample
    if not all((Path(out_dir) / name).is_file() for name in files.values()):
        return False
    new = json.loads(json.dumps(_identity(request, settings, checkpoints)))
    old = {k: sidecar.get(k) for k in new}
    old["settings"] = {k: v for k, v in {**LEGACY_SETTINGS, **(old["settings"] or {})}.items() if k != "batch_size"}
    old["checkpoints"] = {k: None if v is None else v.get("sha256") for k, v in (old["checkpoints"] or {}).items()}
    if old != new:
        changed = sorted(k for k in new if old.get(k) != new[k])
        raise InputError(path, f"sample {request.sample_id} exists but was made with different {', '.join(changed)}; "
                               "use another --out folder or --overwrite")
    return True


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([to_uint8(image[0]), to_uint8(image[1])], axis=1)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_sample(out_dir: Path, request: SampleRequest, image: np.ndarray, settings: SampleSettings,
                 checkpoints: dict, affine: np.ndarray) -> Path:
    """image: (2, S, S) in [-1, 1] -> the sample's files, each atomic, the sidecar last. Returns the sidecar."""
    out_dir = Path(out_dir)
    files = output_files(request.sample_id, request.mask is not None)
    save_nifti(out_dir / files["image"], np.moveaxis(image, 0, -1).astype(np.float32), affine)
    if request.mask is not None:
        save_nifti(out_dir / files["mask"], np.moveaxis(request.mask, 0, -1).astype(np.uint8), affine)
    atomic_write_bytes(out_dir / files["png"], _png_bytes(image))
    sidecar = {"sample_id": request.sample_id, **_identity(request, settings, checkpoints),
               "settings": asdict(settings), "checkpoints": checkpoints, "mask_source": request.mask_source, "files": files,
               "channels": ["ED", "ES"], "pixel_mm": float(affine[0, 0]), **request.extra}
    path = sidecar_path(out_dir, request.sample_id)
    atomic_write_bytes(path, (json.dumps(sidecar, indent=1) + "\n").encode())
    return path


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def run_requests(pipe: Pipeline, requests: Sequence[SampleRequest], out_dir: Path, settings: SampleSettings,
                 checkpoints: dict, overwrite: bool = False, progress: bool = True,
                 inputs: Sequence[Path] = ()) -> tuple[list[str], list[str]]:
    """Generate every request not complete in out_dir -> (generated ids, skipped ids); then writes grid.png.
    inputs: files the caller read (a plan, a slice set), besides the checkpoints and mask files: never overwritten."""
    out_dir = Path(out_dir)
    requests = [_canonical(r) for r in requests]  # the model and the sidecar get one spelling of each prompt
    ids = [r.sample_id for r in requests]
    bad_id = sample_id_problem(ids)  # ids become file names: never a path out of out_dir, never another's file
    if bad_id is not None:
        raise InputError(f"sample id {str(ids[bad_id[0]])[:100]!r}", bad_id[1])
    if len({r.mask is None for r in requests}) > 1:
        raise InputError("masks", "mix of masked and unmasked samples in one call; run them separately")
    bad_seed = next((r for r in requests if type(r.seed) is not int or not 0 <= r.seed < SEED_LIMIT), None)
    if bad_seed is not None:  # torch.manual_seed would alias -1 to 2^64-1 and raise a traceback at 2^64
        raise InputError("seed", f"sample {bad_seed.sample_id}: seed {str(bad_seed.seed)[:40]}; expected an integer "
                                 f"in [0, 2^64)")
    check_outputs_spare_inputs(call_outputs(out_dir, requests), [*inputs, *request_inputs(requests, checkpoints)])
    todo = [r for r in requests if overwrite or not is_complete(out_dir, r, settings, checkpoints)]
    todo_ids = {r.sample_id for r in todo}
    skipped = [i for i in ids if i not in todo_ids]
    affine = grid_affine(pipe.cfg)
    with tqdm(total=len(requests), initial=len(skipped), desc="sampling", unit="sample", disable=not progress) as bar:
        for batch in _batches(todo, settings.batch_size):
            masks = None if batch[0].mask is None else np.stack([r.mask for r in batch])
            with autocast_context(settings.precision, pipe.device):
                images = pipe.generate([r.prompt for r in batch], masks, seed=[r.seed for r in batch],
                                       **generation_kwargs(settings))
            broken = [r.sample_id for r, image in zip(batch, images) if not np.isfinite(image).all()]
            if broken:  # before any file of the batch: a NaN sample must never be written and marked complete
                raise InputError("sampling", f"sample(s) {', '.join(broken[:3])} came out NaN/Inf (guidance "
                                             f"{settings.guidance}, control_scale {settings.control_scale}); nothing "
                                             "written for this batch; expected finite images: check the checkpoints "
                                             "and settings")
            out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed first batch leaves no folder
            for request, image in zip(batch, images):
                write_sample(out_dir, request, image, settings, checkpoints, affine)
            bar.update(len(batch))
    write_call_grid(out_dir, requests)
    return [r.sample_id for r in todo], skipped


def _canonical(request: SampleRequest) -> SampleRequest:
    try:
        return replace(request, prompt=canonical_prompt(request.prompt))
    except InputError as error:
        raise InputError(f"sample {str(request.sample_id)[:100]!r}: prompt", error.problem) from None


def call_outputs(out_dir: Path, requests: Sequence[SampleRequest]) -> list[Path]:
    """Every file a call writes: each sample's files and sidecar, and grid.png."""
    names = [name for r in requests for name in output_files(r.sample_id, r.mask is not None).values()]
    names += [sidecar_path(out_dir, r.sample_id).name for r in requests] + ["grid.png"]
    return [Path(out_dir) / name for name in names]


def request_inputs(requests: Sequence[SampleRequest], checkpoints: dict) -> set[Path]:
    """The files a call reads: checkpoints, and the mask files or slice set each request's mask came from."""
    found = {Path(c["path"]) for c in checkpoints.values() if c}
    return found | {Path(r.mask_source[k]) for r in requests for k in ("ed", "es", "file") if r.mask_source.get(k)}


def write_call_grid(out_dir: Path, requests: Sequence[SampleRequest]) -> Path:
    """grid.png of the call's samples (first GRID_LIMIT), read back from disk, with mask overlays."""
    shown = list(requests)[:GRID_LIMIT]
    images = np.stack([np.moveaxis(load_nifti(Path(out_dir) / f"{r.sample_id}.nii.gz")[0], -1, 0) for r in shown])
    masks = None if shown[0].mask is None else np.stack([r.mask for r in shown])
    return save_grid(Path(out_dir) / "grid.png", images, masks, [r.sample_id for r in shown], ncols=4)


def find_slice_set(run_dir: Path, cfg, subject_ids: set[str]):
    """The run's cached SliceSet (<run>/cache/slices-<config hash>-*.npz) holding all subject_ids -> (path,
    SliceSet); the newest when several do (a train and a test cohort share the cache folder)."""
    found = sorted((Path(run_dir) / "cache").glob(f"slices-{config_hash(cfg.data.preprocess)}-*.npz"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        slices = SliceSet.load(path)
        if set(subject_ids) <= set(slices.subject_ids):
            return path, slices
    problem = "no cached slice set" if not found else f"none of {', '.join(p.name for p in found)} holds all subjects"
    raise InputError(Path(run_dir) / "cache", f"{problem} for this run's preprocessing; pass --slices FILE")


def plan_requests(plan, cfg, slices=None, slices_path: Optional[Path] = None, plan_dir: Path = Path("."),
                  labels: str = "ukbb") -> list[SampleRequest]:
    """Rows of a validated plan (data.plan_csv.load_plan) -> requests. Masks from the SliceSet row `mask_row`
    (whose subject must be mask_subject_id), or from the file in `mask_path` (relative to the plan's folder,
    optional `mask_es_path`). jitter=1 perturbs the mask, jitter=2 deforms it (plan.donors deform), seeded by the sample's seed."""
    requests = []
    for i, row in enumerate(plan.to_dict("records")):
        where = f"plan line {i + 2} (sample {row['sample_id']})"
        mask_path = str(row.get("mask_path") or "").strip()
        if mask_path:
            es_path = str(row.get("mask_es_path") or "").strip()
            ed, es = plan_dir / mask_path, (plan_dir / es_path if es_path else None)
            mask = load_control_masks(ed, es, cfg.data.preprocess, labels)
            source = {"kind": "file", "ed": str(ed), "es": None if es is None else str(es), "labels": labels}
        else:
            if slices is None:
                raise InputError(where, "mask_row needs the run's slice set (pass --run or --slices)")
            r = int(row["mask_row"])
            if r >= len(slices):
                raise InputError(f"{where}: mask_row", f"row {r} outside the slice set's {len(slices)} rows ({slices_path})")
            if slices.subject_ids[r] != str(row["mask_subject_id"]):
                raise InputError(f"{where}: mask_row", f"row {r} is subject {slices.subject_ids[r]} in {slices_path}, "
                                                       f"the plan says {row['mask_subject_id']}; wrong slice set?")
            mask = slices.masks[r]
            source = {"kind": "slice_set", "file": None if slices_path is None else str(slices_path), "row": r,
                      "subject_id": slices.subject_ids[r], "slice_index": int(slices.slice_index[r])}
        mask = jittered(mask, int(row["jitter"]), int(row["seed"]))
        source["jitter"] = int(row["jitter"])
        attributes = {k: json_ready(row[k]) for k in ("sex", "age", "bmi", "health")}
        requests.append(SampleRequest(str(row["sample_id"]), str(row["prompt"]), int(row["seed"]), mask, source,
                                      {"attributes": attributes}))
    return requests
