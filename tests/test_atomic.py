import os
import stat

import pytest

from data.atomic import atomic_write, atomic_write_bytes


def test_write_replaces_the_file_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["out.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(b"ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_the_temp_file_keeps_the_suffix_a_writer_chooses_its_format_by(tmp_path):
    seen = []
    atomic_write(tmp_path / "x.nii.gz", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()), suffix=".nii.gz")
    assert seen[0].endswith(".nii.gz") and (tmp_path / "x.nii.gz").is_file()
