"""Issue 18, class 10: one writer per run folder. train.py holds runs/<name>/.lock (fcntl.flock, so the kernel
frees it when the holder dies); a second train.py on the folder refuses with one line naming the holder."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import train
from data.errors import InputError
from run.lock import LOCK, run_lock
from tests.test_robustness import SMOKE, assert_refused, call, tree

HOLD = textwrap.dedent("""
    import sys, time
    from run.lock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/runs/smoke's lock."""
    folder = tmp_path / "runs" / "smoke"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_second_train_on_a_held_run_folder_refuses_naming_the_holder(holder, capsys):
    folder, proc = holder
    before = tree(folder)
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", folder.parent, "--stage", "vae"])
    assert_refused(code, err, [str(folder / LOCK), "run folder in use by process", str(proc.pid), "another --name"])
    assert tree(folder) == before == [LOCK]  # nothing written, the holder's lock untouched


def test_the_lock_of_a_killed_process_is_taken_over(holder):
    folder, proc = holder
    proc.kill()
    proc.wait()
    assert (folder / LOCK).is_file()  # SIGKILL: no cleanup ran, the file names a dead process
    with run_lock(folder) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_the_lock_is_released_on_error_and_a_new_empty_folder_removed(tmp_path):
    folder = tmp_path / "runs" / "x"
    with pytest.raises(RuntimeError):
        with run_lock(folder):
            raise RuntimeError("stage failed")
    assert tree(tmp_path) == []
    with run_lock(folder):
        (folder / "kept").write_text("output")
    assert tree(tmp_path) == ["runs", "runs/x", "runs/x/kept"]  # a folder with outputs stays; the lock goes


def test_one_process_cannot_take_the_lock_twice(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(InputError, match="run folder in use by process"):
            with run_lock(tmp_path / "run"):
                pass
