"""Deterministic synthetic UK-Biobank-like cohort with a built-in bias, written in the ukbb_cardiac layout.

    python -m data.synthetic --out data/synthetic_ukbb --n 600 --seed 0

out/<eid>/{sa_ED, sa_ES, seg_sa_ED, seg_sa_ES}.nii.gz and out/metadata.csv (eid, sex, age, bmi, health).
Subject k depends only on (seed, k), never on n; the same seed gives byte-identical files.
The generative model (and its intended shortcuts) is written down in docs/synthetic-cohort.md.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from data.atomic import atomic_write_bytes
from data.attributes import Attributes
from data.errors import InputError, OneLineArgumentParser
from data.limits import check_shape
from data.phantom import KNOBS_OFF, PhantomKnobs, cohort_affine, render_subject
from data.subgroups import format_composition, subgroup_table

__all__ = ["generate_cohort", "sample_metadata", "render_subject", "hf_probability", "main"]

COLUMNS = ("eid", "sex", "age", "bmi", "health")
FIRST_EID = 1000001  # 7-digit ids like UK Biobank's
MARKER = "synthetic_cohort.json"  # written first: marks a folder as ours; lists (with sha256) the files we wrote
MAX_SUBJECTS = 1_000_000  # the metadata table is built in memory (UK Biobank imaged ~100k)
SUBJECT_FILES = ("sa_ED.nii.gz", "sa_ES.nii.gz", "seg_sa_ED.nii.gz", "seg_sa_ES.nii.gz")
DEFAULT_SHAPE = (96, 96, 8)
# Metadata model (docs/synthetic-cohort.md): ages 40-79, BMI log-normal, heart failure by a logistic.
AGE_MIN, AGE_SPAN, AGE_BETA = 40, 40, (2.2, 1.8)
BMI_MEDIAN = {"female": 26.2, "male": 27.4}
BMI_LOG_SD, BMI_CLIP = 0.16, (16.0, 50.0)
HF_LOGIT = {"intercept": -2.3, "per_decade_over_60": 1.0, "male": 1.0, "per_5_bmi_over_27": 1.0}
MI_LOGIT = {"intercept": -3.5, "per_decade_over_60": 0.5, "male": 0.7}


PREVALENCES = ("biased", "balanced")
BALANCED_HF_RATE = 0.4


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hf_probability(sex: str, age: float, bmi: float) -> float:
    """P(heart_failure | sex, age, bmi): the cohort's built-in bias (rare in young, normal-BMI women)."""
    c = HF_LOGIT
    z = c["intercept"] + c["per_decade_over_60"] * (age - 60) / 10 + c["male"] * (sex == "male") \
        + c["per_5_bmi_over_27"] * (bmi - 27) / 5
    return float(_sigmoid(z))


def mi_probability(sex: str, age: float) -> float:
    """P(myocardial_infarction | not heart failure, sex, age): a small extra negative class."""
    c = MI_LOGIT
    return float(_sigmoid(c["intercept"] + c["per_decade_over_60"] * (age - 60) / 10 + c["male"] * (sex == "male")))


def _subject_rng(seed: int, k: int, stream: int) -> np.random.Generator:
    """Stream 0 = metadata, 1 = images, 2 = the PhantomKnobs draws of subject k (used only when a knob is on).

    SeedSequence(seed, spawn_key=(k,)) == SeedSequence(seed).spawn(n)[k] for any n > k: subject k ignores n.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, stream)))


def _sample_one(rng: np.random.Generator, prevalence: str = "biased") -> tuple[str, int, float, str]:
    sex = "male" if rng.random() < 0.5 else "female"
    age = AGE_MIN + int(AGE_SPAN * rng.beta(*AGE_BETA))
    bmi = math.exp(math.log(BMI_MEDIAN[sex]) + BMI_LOG_SD * rng.standard_normal())
    bmi = round(min(max(bmi, BMI_CLIP[0]), BMI_CLIP[1]), 1)
    # "balanced": HF independent of the attributes, for a test population where every subgroup has positives.
    p_hf = hf_probability(sex, age, bmi) if prevalence == "biased" else BALANCED_HF_RATE
    p_mi = mi_probability(sex, age)
    u = rng.random()
    health = "heart_failure" if u < p_hf else "myocardial_infarction" if u < p_hf + (1 - p_hf) * p_mi else "healthy"
    return sex, age, bmi, health


def _check_n_seed(n, seed) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= MAX_SUBJECTS:
        raise InputError("n", f"number of subjects must be a positive integer <= {MAX_SUBJECTS:,}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError("seed", f"seed must be a non-negative integer, got {seed!r}")


def sample_metadata(n: int, seed: int = 0, prevalence: str = "biased", first_eid: int = FIRST_EID) -> pd.DataFrame:
    """n subjects -> DataFrame with columns eid (int), sex, age (int years), bmi (1 decimal), health.

    prevalence "biased": the cohort's built-in HF logistic; "balanced": HF at BALANCED_HF_RATE in every subgroup.
    """
    _check_n_seed(n, seed)
    if prevalence not in PREVALENCES:
        raise InputError("prevalence", f"unknown prevalence {prevalence!r}; expected one of {', '.join(PREVALENCES)}")
    rows = [(first_eid + k, *_sample_one(_subject_rng(int(seed), k, 0), prevalence)) for k in range(n)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Volume -> .nii.gz bytes with no timestamp in the gzip header, so equal inputs give equal bytes."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _write_marker(out_dir: Path, record: dict) -> None:
    atomic_write_bytes(out_dir / MARKER, (json.dumps(record, sort_keys=True) + "\n").encode())


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
        valid = len(dims) == 3 and all(float(s) == d for s, d in zip(shape, dims))
    except (TypeError, ValueError):
        valid = False
    if not valid or dims[0] < 16 or dims[1] < 16 or dims[2] < 1:
        raise InputError("shape", f"expected three integers (X, Y, Z) with X, Y >= 16 and Z >= 1, got {shape!r}")
    check_shape("shape", dims)  # rendering allocates several float volumes of this size
    return dims


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a file or into a non-empty folder that is not a synthetic cohort."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise InputError(out_dir, f"output directory is not empty and is not a synthetic cohort (no {MARKER}); "
                                  "choose a new or empty directory")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _owned_files(out_dir: Path) -> dict[str, str]:
    """{'<eid>/<file>': sha256} of the subject files an earlier run recorded in its marker as written by it;
    {} for a marker without that record (older versions) or an unreadable one: then nothing counts as ours."""
    try:
        files = json.loads((out_dir / MARKER).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {name: digest for name, digest in files.items() if isinstance(digest, str) and
            len(Path(name).parts) == 2 and Path(name).parts[0].isdigit() and Path(name).parts[1] in SUBJECT_FILES}


def _remove_stale_subjects(out_dir: Path, owned: dict[str, str], keep: set[str]) -> None:
    """Delete files an earlier run wrote (per its manifest) that the new cohort does not rewrite, and only while
    their bytes are still the ones it wrote; a folder is removed only once empty. Anything else is left alone."""
    for name, digest in owned.items():
        path = out_dir / name
        if name in keep or path.is_symlink() or not path.is_file() or _sha256(path) != digest:
            continue
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()


def generate_cohort(out_dir: Path, n: int, seed: int = 0, *, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                    progress: bool = False, prevalence: str = "biased", first_eid: int = FIRST_EID,
                    knobs: PhantomKnobs = KNOBS_OFF) -> Path:
    """Write n synthetic subjects + metadata.csv under out_dir (UK Biobank layout); returns out_dir.

    Images int16 (X, Y, Z), masks uint8 (0 bg, 1 LV, 2 MYO, 3 RV); (96, 96, 8) -> 1.8 x 1.8 x 10 mm voxels.
    knobs: the phantom's difficulty knobs; off, the cohort (marker included) is byte for byte the original one.
    """
    out_dir = Path(out_dir)
    _check_n_seed(n, seed)
    dims = _check_shape(shape)
    _check_out_dir(out_dir)
    owned = _owned_files(out_dir) if out_dir.is_dir() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"generator": "data.synthetic", "n": int(n), "seed": int(seed), "shape": list(dims),
                  "prevalence": prevalence, "first_eid": int(first_eid)}
    if not knobs.off:
        provenance["phantom"] = asdict(knobs)
    # The marker keeps listing what earlier runs wrote until this run has finished: a killed run forgets nothing.
    _write_marker(out_dir, {**provenance, "files": owned})
    (out_dir / "metadata.csv").unlink(missing_ok=True)  # an earlier run's table must not describe a half-new folder
    metadata = sample_metadata(n, seed, prevalence, first_eid)
    affine = cohort_affine(dims)
    rows = tqdm(metadata.itertuples(index=False), total=n, desc="subjects", unit="subj", disable=not progress)
    written: dict[str, str] = {}  # the manifest: '<eid>/<file>' -> sha256 of the bytes this run wrote
    preserved_ef: list[int] = []  # heart-failure subjects rendered without the geometric sign
    for k, row in enumerate(rows):
        attrs = Attributes(sex=row.sex, age=float(row.age), bmi=float(row.bmi), health=row.health)
        preserved = not knobs.off and knobs.is_preserved_ef(attrs, _subject_rng(int(seed), k, 2))
        preserved_ef += [int(row.eid)] if preserved else []
        volumes = render_subject(attrs, _subject_rng(int(seed), k, 1), dims, knobs, preserved)
        folder = out_dir / str(row.eid)
        folder.mkdir(exist_ok=True)
        for name in SUBJECT_FILES:
            data = nifti_gz_bytes(volumes[name.removesuffix(".nii.gz")], affine)
            atomic_write_bytes(folder / name, data)
            written[f"{row.eid}/{name}"] = hashlib.sha256(data).hexdigest()
    _remove_stale_subjects(out_dir, owned, set(written))
    _write_marker(out_dir, {**provenance, "files": written, **({} if knobs.off else {"preserved_ef": preserved_ef})})
    # metadata.csv last: a folder with it is a complete cohort.
    csv = metadata.to_csv(index=False, float_format="%.1f", lineterminator="\n")
    atomic_write_bytes(out_dir / "metadata.csv", csv.encode())
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog="python -m data.synthetic",
        description="Write a deterministic synthetic UK-Biobank-like cardiac cohort (short-axis ED/ES images, "
                    "LV/MYO/RV masks, metadata.csv) whose heart-failure rate depends on sex, age and BMI.")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (new, empty, or an earlier synthetic cohort)")
    parser.add_argument("--n", required=True, type=int, help="number of subjects (> 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; same seed -> byte-identical files (default 0)")
    parser.add_argument("--prevalence", choices=PREVALENCES, default="biased",
                        help="biased: HF depends on sex/age/BMI (default); balanced: same HF rate in every subgroup")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"),
                        help="volume size; the field of view is fixed, so this sets the resolution (default 96 96 8)")
    args = parser.parse_args(argv)
    try:
        generate_cohort(args.out, args.n, args.seed, shape=tuple(args.shape), progress=True, prevalence=args.prevalence)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # read-only or full disk, a file where a folder should be, a name too long
        print(f"error: {err.filename or args.out}: {err.strerror or err}; expected a writable output folder",
              file=sys.stderr)
        return 2
    metadata = pd.read_csv(args.out / "metadata.csv")
    print(f"wrote {len(metadata)} subjects to {args.out}")
    print(format_composition(subgroup_table(metadata)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
