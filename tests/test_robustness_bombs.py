"""Issue 18, class 11: sizes a NIfTI, PNG, .npz or YAML file merely claims are refused before anything is allocated."""
import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import run.pipeline  # noqa: F401 - imported before any tracemalloc window: import costs are not the input's
import run.config  # noqa: F401
import train
from data.errors import InputError
from data.limits import MAX_VOXELS
from data.mask_input import read_mask_file
from data.nifti import load_nifti
from tests.fixtures import write_ukbb_fixture
from tests.test_robustness import FIRST, SMOKE, assert_refused, call

MiB = 1 << 20


def peak_bytes(fn) -> tuple[int, object]:
    """Peak Python/numpy heap allocation (tracemalloc) while fn runs -> (bytes, what fn raised or returned)."""
    tracemalloc.start()
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - the caller asserts on it
        result = err
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, result


# ------------------------------------------------------------------------------------------- class 11: NIfTI

def _header(shape, dtype=np.uint8) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    return header.binaryblock + b"\0" * 4  # 348-byte header + extension flag: data starts at 352


def _gzip_zeros(path: Path, head: bytes, n_bytes: int) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(head)
        block = b"\0" * (16 * MiB)
        for start in range(0, n_bytes, len(block)):
            handle.write(block[: min(len(block), n_bytes - start)])
    return path


NIFTI_BOMBS = {  # name -> (file name, its bytes or a writer, fragments)
    "352-byte header claiming 32767^3": ("sa_ED.nii", _header((32767, 32767, 32767), np.int16),
                                         ["(32767, 32767, 32767)", "35,181,150,961,663 voxels", "limit"]),
    "valid gzip of 8192x8192x3 (over the voxel limit)": (
        "sa_ED.nii.gz", lambda p: _gzip_zeros(p, _header((8192, 8192, 3)), 8192 * 8192 * 3), ["(8192, 8192, 3)", "limit"]),
    "4-D header claiming 1000 frames": ("sa_ED.nii.gz", gzip.compress(_header((512, 512, 1000, 2))),
                                        ["(512, 512, 1000, 2)", "limit"]),
    "header within the limit, gzip holds 1 kB": (
        "sa_ED.nii.gz", gzip.compress(_header((512, 512, 256), np.float32) + b"\0" * 1000),
        ["truncated", "(512, 512, 256)", "holds 1,352"]),
    "header within the limit, .nii holds 1 kB": ("sa_ED.nii", _header((512, 512, 256), np.float32) + b"\0" * 1000,
                                                 ["truncated", "holds 1,352 bytes"]),
}


@pytest.mark.parametrize("bomb", NIFTI_BOMBS)
def test_nifti_size_claims_are_refused_before_allocation(tmp_path, bomb):
    name, content, fragments = NIFTI_BOMBS[bomb]
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else content(path)
    peak, result = peak_bytes(lambda: load_nifti(path))
    assert isinstance(result, InputError), result
    assert str(path) in str(result) and all(f in str(result) for f in fragments), str(result)
    assert peak < 8 * MiB, f"{peak / MiB:.0f} MiB allocated for a refused file"


def test_a_nifti_bomb_in_a_cohort_stops_train_py_and_writes_nothing(tmp_path, capsys):
    root = write_ukbb_fixture(tmp_path / "cohort")
    (root / FIRST / "sa_ES.nii.gz").write_bytes(gzip.compress(_header((32767, 32767, 32767), np.int16)))
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", tmp_path / "runs", "--data", root,
                                             "--stage", "vae"])
    assert_refused(code, err, ["sa_ES.nii.gz", "(32767, 32767, 32767)", "limit"])
    assert not (tmp_path / "runs").exists()


def test_volumes_at_the_limit_still_load(tmp_path):
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 30, 5), np.float32), np.eye(4)), str(path))
    assert load_nifti(path)[0].shape == (40, 30, 5) and MAX_VOXELS >= 512 * 512 * 256 // 2


# --------------------------------------------------------------------------------------------- class 11: PNG

def _png(path: Path, width: int, height: int) -> Path:
    """A valid greyscale PNG of zeros, written row by row (no width x height array is ever made)."""
    squeeze = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _claimed_png(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR claims width x height (CRC fixed): only the claim is big."""
    blob = bytearray(_png(path, 1, 1).read_bytes())
    blob[16:24] = struct.pack(">II", width, height)
    blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))
    return path.write_bytes(bytes(blob)) and path


@pytest.mark.parametrize("make, fragment", [
    (lambda p: _png(p, 9000, 9000), "shape (9000, 9000) claims 81,000,000 pixels"),  # valid, under PIL's own limit
    (lambda p: _claimed_png(p, 20000, 20000), "exceeds limit"),  # PIL's DecompressionBombError, as one line
    (lambda p: _claimed_png(p, 1, 70_000_000), "claims 70,000,000 pixels"),
    (lambda p: _claimed_png(p, 8200, 8200), "claims 67,240,000 pixels"),
])
def test_png_dimensions_are_refused_before_decoding(tmp_path, make, fragment):
    path = make(tmp_path / "mask.png")
    peak, result = peak_bytes(lambda: read_mask_file(path))
    assert isinstance(result, InputError) and "mask.png" in str(result) and fragment in str(result), result
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB"


# --------------------------------------------------------------------------------------------- class 11: .npz

def _npz(path: Path, shape, payload: bytes = b"", name: str = "images.npy") -> Path:
    """An .npz whose one member's .npy header claims `shape` (float32) and holds only `payload` after it."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, header.getvalue() + payload)
    return path


@pytest.mark.parametrize("shape, payload, fragments", [
    ((1 << 20, 2, 1024, 1024), b"", ["(images.npy)", "8,796,093,022,208 bytes", "limit"]),  # 8 TiB
    ((1000, 2, 128, 128), b"\0" * 100, ["(images.npy)", "truncated", "131,072,000 bytes", "holds 100"]),
    ((2, 2, 8, 8), b"\0" * 1024, ["not a slice set"]),  # claims honest: numpy reads it, the format check follows
])
def test_npz_array_claims_are_checked_before_numpy_allocates(tmp_path, capsys, shape, payload, fragments):
    from evaluation.__main__ import main as evaluate_main

    real = _npz(tmp_path / "real.npz", shape, payload)
    fake = _npz(tmp_path / "fake.npz", shape, payload)  # --real is read first: the error names it
    peak, code = peak_bytes(lambda: evaluate_main(["--real", str(real), "--fake", str(fake), "--out",
                                                   str(tmp_path / "metrics")]))
    assert_refused(code, capsys.readouterr().err, ["real.npz", *fragments])
    assert peak < 64 * MiB and not (tmp_path / "metrics").exists(), f"{peak / MiB:.0f} MiB"


def test_slice_set_load_checks_npz_claims_for_every_caller(tmp_path):
    """SliceSet.load (sample.py --slices, the run's caches) runs the same header check as the evaluation CLI."""
    from data.slices import SliceSet

    bomb = _npz(tmp_path / "slices.npz", (1 << 20, 2, 1024, 1024))
    tracemalloc.start()
    with pytest.raises(InputError, match=r"slices.npz.*\(images.npy\).*8,796,093,022,208 bytes"):
        SliceSet.load(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * MiB, f"{peak / MiB:.0f} MiB"


@pytest.mark.parametrize("size", ["0", "1025", "1000000"])
def test_preprocess_size_has_a_declared_range(size):
    from run.config import load_run_config

    with pytest.raises(InputError, match=rf"data.preprocess.size: expected an integer in \[1, 1024\], got {size}"):
        load_run_config(None, [f"data.preprocess.size={size}"])


# -------------------------------------------------------------------------------------------- class 11: YAML

def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nvae:\n  base_channels: *a{levels - 1}\n"


@pytest.mark.parametrize("text, fragments", [
    (_alias_bomb(), ["bad.yaml", "alias *a0", "anchors and aliases are not accepted"]),
    ("vae: &v {base_channels: 8}\nunet: *v\n", ["bad.yaml", "alias *v", "line 2"]),
    ("vae:\n  base_channels: [" + ", ".join(["1"] * 2000) + "]\n", ["vae.base_channels", "a list of 2000 item(s)"]),
    ("vae:\n  " + "x" * 1000 + ": 1\n", ["unknown key", "vae.xxxx"]),
])
def test_config_bombs_are_refused_with_a_short_line(tmp_path, capsys, text, fragments):
    (tmp_path / "bad.yaml").write_text(text)
    peak, code = peak_bytes(lambda: train.main(["--config", str(tmp_path / "bad.yaml"), "--runs", str(tmp_path / "runs")]))
    err = capsys.readouterr().err
    line = assert_refused(code, err, fragments)
    assert len(line) < 600 and peak < 64 * MiB, (len(line), peak)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_config_file_over_the_size_limit_is_not_read(tmp_path, capsys):
    (tmp_path / "big.yaml").write_text("# padding\n" * 200_000)
    code, _, err = call(capsys, train.main, ["--config", tmp_path / "big.yaml", "--runs", tmp_path / "runs"])
    assert_refused(code, err, ["big.yaml", "bytes; a config file is at most 1048576 bytes"])
