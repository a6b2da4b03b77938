"""Atomic file writes: a temp file in the same folder, fsync, rename — readers never see half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

from data.errors import InputError


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call write(tmp_path) on a fresh temp file next to `path`, then rename it over `path`.

    suffix: the temp file's ending, for writers that choose a format by name (".nii.gz", ".npz").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not what an output file should be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_all(files: dict[Path, bytes]) -> list[Path]:
    """Write several files as one unit: every temp file first (a full disk fails here, before any target
    changes), then the renames. A target that is a folder is refused before anything is written."""
    folders = [Path(p) for p in files if Path(p).is_dir()]
    if folders:
        raise IsADirectoryError(21, "is a folder, expected a file name", str(folders[0]))
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [path for _, path in temps]


def check_outputs_spare_inputs(outputs: Iterable[Path], inputs: Iterable[Optional[Path]]) -> None:
    """InputError when an output is an input file (the same path after links, or the same file by inode) or lies
    inside an input folder: a call must never replace what it reads. Run before anything is written."""
    inputs = [Path(p) for p in inputs if p is not None]
    folders = {p.resolve(): p for p in inputs if p.is_dir()}
    files = {p.resolve(): p for p in inputs if not p.is_dir()}
    inodes = {(st.st_dev, st.st_ino): p for p in files.values() if (st := _stat(p)) is not None}
    for out in map(Path, outputs):
        target = out.resolve()
        inside = next((p for folder, p in folders.items() if target.is_relative_to(folder)), None)
        if inside is not None:
            raise InputError(out, f"lies inside the input folder {inside}; expected an output path outside the inputs")
        st = _stat(out)
        same = files.get(target) or (None if st is None else inodes.get((st.st_dev, st.st_ino)))
        if same is not None:
            raise InputError(out, f"is the input file {same}; expected an output path that does not overwrite an input")


def _stat(path: Path) -> Optional[os.stat_result]:
    try:
        return path.stat()
    except OSError:
        return None
