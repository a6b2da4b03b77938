"""The preprocessed 2D training set: SliceSet (arrays + attributes, saved as a pickle-free .npz), a cached
builder from Subjects.
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.atomic import atomic_write
from data.json_ready import json_ready
from data.cohort import Subject
from data.errors import InputError
from data.preprocess import PreprocessConfig, Sample2D, config_hash, preprocess_subject
from data.prompts import attributes_to_prompt
from data.limits import check_npz

FORMAT = "cardiac-ldm-slices-v1"
ATTRIBUTE_COLUMNS = ("subject_id", "sex", "age", "bmi", "health", "prompt")


def attributes_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Rows with ATTRIBUTE_COLUMNS -> DataFrame with fixed dtypes (age/bmi float with NaN, text object with None)."""
    def text(col):
        return pd.Series([r.get(col) for r in records], dtype=object)

    def number(col):
        return pd.Series([np.nan if r.get(col) is None else float(r[col]) for r in records], dtype=np.float64)

    return pd.DataFrame({"subject_id": text("subject_id"), "sex": text("sex"), "age": number("age"),
                         "bmi": number("bmi"), "health": text("health"), "prompt": text("prompt")})


def _records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame -> JSON-ready rows (NaN -> None)."""
    return json_ready(frame[list(ATTRIBUTE_COLUMNS)])


@dataclass
class SliceSet:
    """N samples. images: (N, 2, S, S) float32 in [-1, 1]; masks: (N, 2, S, S) uint8; slice_index: (N,);
    attributes: N rows with ATTRIBUTE_COLUMNS. Channel 0 is ED, channel 1 is ES."""

    images: np.ndarray
    masks: np.ndarray
    subject_ids: list[str]
    slice_index: np.ndarray
    attributes: pd.DataFrame

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        self.masks = np.asarray(self.masks, dtype=np.uint8)
        self.subject_ids = [str(s) for s in self.subject_ids]
        self.slice_index = np.asarray(self.slice_index, dtype=np.int64).reshape(-1)
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[1] != 2 or self.masks.shape != self.images.shape:
            raise InputError("SliceSet", f"expected images and masks (N, 2, S, S), got {self.images.shape} and {self.masks.shape}")
        lengths = {"subject_ids": len(self.subject_ids), "slice_index": len(self.slice_index), "attributes": len(self.attributes)}
        if any(v != n for v in lengths.values()):
            raise InputError("SliceSet", f"expected {n} entries everywhere, got {lengths}")
        missing = [c for c in ATTRIBUTE_COLUMNS if c not in self.attributes.columns]
        if missing:
            raise InputError("SliceSet.attributes", f"missing column(s) {', '.join(missing)}")
        self.attributes = attributes_frame(_records(self.attributes))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def prompts(self) -> list[str]:
        return list(self.attributes["prompt"])

    def select(self, indices) -> "SliceSet":
        """Subset (indices: ints or a boolean mask), in the given order."""
        indices = np.asarray(indices)
        idx = np.arange(len(self))[indices if indices.dtype == bool else indices.astype(np.int64)]
        return SliceSet(self.images[idx], self.masks[idx], [self.subject_ids[i] for i in idx],
                        self.slice_index[idx], self.attributes.iloc[idx].reset_index(drop=True))

    def save(self, path: str | Path) -> Path:
        """Write an .npz (no pickled objects; attributes as a JSON string), atomically."""
        return atomic_write(path, lambda tmp: np.savez(
            tmp, format=np.array(FORMAT), images=self.images, masks=self.masks,
            subject_ids=np.array(self.subject_ids, dtype=str), slice_index=self.slice_index,
            attributes_json=np.array(json.dumps(_records(self.attributes)))), suffix=".npz")

    @classmethod
    def load(cls, path: str | Path) -> "SliceSet":
        path = Path(path)
        if not path.is_file():
            raise InputError(str(path), "no such slice-set file")
        check_npz(path)  # header claims before numpy allocates them (sample.py --slices, the caches, evaluation)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data.files or str(data["format"]) != FORMAT:
                    raise InputError(str(path), f"not a slice set (expected format {FORMAT})")
                return cls(data["images"], data["masks"], list(data["subject_ids"]), data["slice_index"],
                           attributes_frame(json.loads(str(data["attributes_json"]))))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(str(path), f"unreadable slice-set file ({error})") from None


def _subject_fingerprint(subject: Subject) -> list:
    """What identifies a subject's inputs: its source file (size, mtime) or, in memory, its array contents."""
    source = subject.source
    if source is None:
        digest = hashlib.sha256()
        for array in (subject.image_ed, subject.image_es, subject.mask_ed, subject.mask_es):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.data)
        return ["memory", digest.hexdigest()]
    stat = Path(source).stat() if Path(source).is_file() else None
    return [str(source)] + ([stat.st_size, stat.st_mtime_ns] if stat else [])


def cohort_key(subjects: Sequence[Subject]) -> str:
    """Short hash of subject ids, sources, spacings and attributes: a different cohort never shares a cache."""
    parts = [[s.subject_id, _subject_fingerprint(s), None if s.spacing is None else [float(v) for v in s.spacing],
              s.attributes.to_dict()] for s in subjects]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def slice_set_from_samples(samples: Sequence[Sample2D]) -> SliceSet:
    records = [{**sample.attributes.to_dict(), "subject_id": sample.subject_id,
                "prompt": attributes_to_prompt(sample.attributes, sample.position)} for sample in samples]
    return SliceSet(np.stack([s.image for s in samples]), np.stack([s.mask for s in samples]),
                    [s.subject_id for s in samples], np.array([s.slice_index for s in samples]),
                    attributes_frame(records))


def build_slice_set(subjects: Sequence[Subject], cfg: PreprocessConfig, cache_dir: Optional[Path] = None,
                    progress: bool = True) -> SliceSet:
    """Preprocess every subject (or reuse cache_dir/slices-{config_hash}-{cohort_key}.npz)."""
    subjects = list(subjects)
    if not subjects:
        raise InputError("cohort", "no subjects to preprocess")
    ids = [s.subject_id for s in subjects]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError("cohort", f"subject ids must be unique; repeated: {', '.join(repeated[:5])}")
    cache = None if cache_dir is None else Path(cache_dir) / f"slices-{config_hash(cfg)}-{cohort_key(subjects)}.npz"
    if cache is not None and cache.is_file():
        try:
            return SliceSet.load(cache)
        except InputError as error:
            warnings.warn(f"rebuilding the slice cache: {error}")
    samples: list[Sample2D] = []
    for subject in tqdm(subjects, desc="preprocess", unit="subject", disable=not progress):
        samples.extend(preprocess_subject(subject, cfg))
    assumed = sorted({s.subject_id for s in samples if s.spacing_assumed})
    if assumed:
        warnings.warn(f"{len(assumed)} subject(s) carry no spacing (e.g. {assumed[0]}); "
                      f"assumed {cfg.unknown_spacing_mm} mm in-plane")
    if not samples:
        raise InputError("PreprocessConfig.slice_offsets", f"offsets {cfg.slice_offsets} left no slice inside the LV of any subject")
    slice_set = slice_set_from_samples(samples)
    if cache is not None:
        slice_set.save(cache)
    return slice_set
