"""One run folder, one writer: `train.py` holds runs/<name>/.lock (an OS file lock) while it runs.

The lock is fcntl.flock on the file, so the kernel releases it when its process dies for any reason: a lock left
by a dead process is free and the next run takes it over; the file only names the holder for the refusal message.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from data.errors import InputError

LOCK = ".lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"process {info['pid']} on {info['host']} ({info['command']}), since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it has the lock but has not written its name yet


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold run_dir's lock for the block; InputError (naming the holder) when another live process holds it.
    A run folder this call created and that is still empty on exit (a refused run) is removed again."""
    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # innermost first
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(run_dir, f"cannot create the run folder ({error.strerror})") from None
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(path, f"run folder in use by {_holder(path)}; expected no other train.py on it: "
                                   "wait for it to finish, or use another --name") from None
        # the holder before us may have unlinked the file between our open and our lock: lock the file now there
        if path.exists() and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": os.uname().nodename, "command": " ".join(["python", *sys.argv])[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiting process re-checks the inode above
        os.close(fd)
        with contextlib.suppress(OSError):
            for folder in created:
                folder.rmdir()  # only if empty: a refused first run leaves no folder
