"""Image sets to evaluate: a folder of generated samples (sample.py's NIfTIs + JSON sidecars) or a SliceSet .npz.

Generated samples carry no patient: their attributes are what the prompt asked for (sex, health, age decade,
BMI category), so age and BMI stay NaN and labels are read from the prompt (evaluation.attributes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.cohort import NUM_LABELS
from data.errors import InputError
from data.limits import check_npz
from data.nifti import load_nifti
from data.prompts import prompt_to_attributes
from data.slices import SliceSet, attributes_frame
from data.split import subject_split

RANGE_TOLERANCE = 1e-3  # float32 round-off around the [-1, 1] intensity range


@dataclass
class ImageSet:
    """N ED/ES pairs. images: (N, 2, S, S) float32 in [-1, 1]; masks: (N, 2, S, S) uint8 or None (no geometry);
    attributes: N rows with ATTRIBUTE_COLUMNS; pixel_mm: the grid's pixel size when the files say it."""

    images: np.ndarray
    masks: Optional[np.ndarray]
    subject_ids: list[str]
    attributes: pd.DataFrame
    source: str = "memory"
    pixel_mm: Optional[float] = None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        x = self.images
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3] or len(x) == 0:
            raise InputError(self.source, f"expected images (N, 2, S, S) with N >= 1, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError(self.source, f"{int((~np.isfinite(x)).sum())} NaN/inf pixel values")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=np.uint8)
            if self.masks.shape != x.shape:
                raise InputError(self.source, f"masks {self.masks.shape} do not match images {x.shape}")
        self.subject_ids = [str(s) for s in self.subject_ids]
        if len(self.subject_ids) != len(x) or len(self.attributes) != len(x):
            raise InputError(self.source, f"expected {len(x)} subject ids and attribute rows, got "
                                          f"{len(self.subject_ids)} and {len(self.attributes)}")
        self.attributes = self.attributes.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def prompts(self) -> list[str]:
        return ["" if p is None else str(p) for p in self.attributes["prompt"]]

    def select(self, indices) -> "ImageSet":
        idx = np.arange(len(self))[np.asarray(indices)]
        return ImageSet(self.images[idx], None if self.masks is None else self.masks[idx],
                        [self.subject_ids[i] for i in idx], self.attributes.iloc[idx], self.source, self.pixel_mm)


def as_image_set(data: Union[ImageSet, SliceSet], source: str = "memory") -> ImageSet:
    """A SliceSet (or an ImageSet, returned as is) -> ImageSet."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, SliceSet):
        return ImageSet(data.images, data.masks, data.subject_ids, data.attributes, source)
    raise InputError(source, f"expected an ImageSet or SliceSet, got {type(data).__name__}")


def _read_sidecar(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "missing sidecar; every <id>.nii.gz needs its <id>.json (sample.py writes it last, "
                               "so a missing one means an interrupted sample: rerun sample.py to finish it)")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable JSON sidecar ({err})") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("prompt"), str) or "seed" not in sidecar:
        raise InputError(path, "sidecar needs at least a string 'prompt' and a 'seed'")
    try:
        prompt_to_attributes(sidecar["prompt"])
    except InputError as err:
        raise InputError(path, f"prompt: {err.problem}") from None
    return sidecar


def _read_pair(path: Path, is_mask: bool) -> np.ndarray:
    """<id>.nii.gz (S, S, 2) -> (2, S, S)."""
    data = load_nifti(path, is_mask=is_mask)[0]
    if data.ndim != 3 or data.shape[2] != 2 or data.shape[0] != data.shape[1]:
        raise InputError(path, f"expected an (S, S, 2) ED/ES pair, got shape {data.shape}")
    if is_mask and (data.min() < 0 or data.max() >= NUM_LABELS):
        raise InputError(path, f"mask labels must lie in [0, {NUM_LABELS - 1}], got [{data.min()}, {data.max()}]")
    if not is_mask and np.abs(data).max() > 1 + RANGE_TOLERANCE:
        raise InputError(path, f"intensities must lie in [-1, 1] (sample.py's range), got "
                               f"[{data.min():.3g}, {data.max():.3g}]")
    return np.moveaxis(data, -1, 0)


def load_sample_folder(folder: Path, progress: bool = True) -> ImageSet:
    """sample.py's output folder -> ImageSet; each sample <id>.nii.gz (+ <id>_mask.nii.gz) + <id>.json."""
    # '.<name>...' are temp files of a write that was interrupted (atomic writes); they are never samples.
    image_paths = sorted(p for p in folder.glob("*.nii.gz") if not p.name.endswith("_mask.nii.gz")
                         and not p.name.startswith("."))
    # a sample whose own id ends in _mask (written before such ids were refused) must not pass for a mask file
    masked_id = next((p for p in sorted(folder.glob("*_mask.nii.gz")) if not p.name.startswith(".")
                      and (folder / f"{p.name[:-len('.nii.gz')]}.json").is_file()), None)
    if masked_id is not None:
        raise InputError(masked_id, f"has a sidecar {masked_id.name[:-len('.nii.gz')]}.json: a sample whose id ends in "
                                    "'_mask', which names mask files; expected sample ids not ending in '_mask' "
                                    "(rename the sample's files and its sidecar)")
    if not image_paths:
        raise InputError(folder, "no samples: expected <id>.nii.gz files with <id>.json sidecars (sample.py output)")
    images, masks, ids, records, pixels = [], [], [], [], set()
    for path in tqdm(image_paths, desc=f"load {folder.name}", unit="sample", disable=not progress):
        sample_id = path.name[: -len(".nii.gz")]
        sidecar = _read_sidecar(folder / f"{sample_id}.json")
        pair = _read_pair(path, is_mask=False)
        if images and pair.shape != images[0].shape:
            raise InputError(path, f"image size {pair.shape[1:]} differs from {image_paths[0].name}'s "
                                   f"{images[0].shape[1:]}; evaluate one image size at a time")
        mask_path = folder / f"{sample_id}_mask.nii.gz"
        masks.append(_read_pair(mask_path, is_mask=True) if mask_path.is_file() else None)
        if masks[-1] is not None and masks[-1].shape != pair.shape:
            raise InputError(mask_path, f"mask shape {masks[-1].shape} does not match its image {pair.shape}")
        parsed = prompt_to_attributes(sidecar["prompt"])
        subject = sidecar.get("subject_id") or sample_id
        records.append({"subject_id": str(subject), "sex": parsed.sex, "age": None, "bmi": None,
                        "health": parsed.health, "prompt": sidecar["prompt"]})
        images.append(pair)
        ids.append(str(subject))
        if isinstance(sidecar.get("pixel_mm"), (int, float)):
            pixels.add(round(float(sidecar["pixel_mm"]), 6))
    with_mask = sum(m is not None for m in masks)
    if 0 < with_mask < len(masks):
        missing = next(p for p, m in zip(image_paths, masks) if m is None)
        raise InputError(missing, f"no <id>_mask.nii.gz although {with_mask} of {len(masks)} samples have one; "
                                  "evaluate mask-conditioned and unconditioned samples in separate folders")
    return ImageSet(np.stack(images), np.stack(masks) if with_mask else None, ids, attributes_frame(records),
                    str(folder), pixels.pop() if len(pixels) == 1 else None)


def load_image_set(path: Union[str, Path], progress: bool = True) -> ImageSet:
    """A folder of generated samples or a SliceSet .npz -> ImageSet. Bad input -> InputError naming the file."""
    path = Path(path)
    if path.is_dir():
        return load_sample_folder(path, progress)
    if path.is_file() and path.suffix == ".npz":
        check_npz(path)  # header claims before numpy allocates them
        return as_image_set(SliceSet.load(path), str(path))
    if not path.exists():
        raise InputError(path, "not found; expected a folder of samples or a slice-set .npz")
    raise InputError(path, "expected a folder of samples (sample.py output) or a slice-set .npz")


def split_by_subject(data: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Subject-disjoint (train, test) split, about test_fraction of the subjects in test."""
    train_idx, test_idx = subject_split(data.subject_ids, np.zeros(len(data)), test_fraction, seed)
    return data.select(train_idx), data.select(test_idx)
