"""Issue 18, the CLI edges of classes 11, 13 and 15: bounded --n, blank fields, the same image set on two sides of
the evaluation, and OS errors in train.py as one line (exit 2)."""
from __future__ import annotations

import errno
import re

import pytest

import sample
import train
from data.errors import InputError
from data.json_ready import read_json_object
from data.limits import MAX_SAMPLES
from evaluation.__main__ import main as evaluation_main


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("n", [0, -3, MAX_SAMPLES + 1, 10**18])
def test_sample_n_outside_the_bound_is_refused_before_anything(tmp_path, capsys, n):
    out = tmp_path / "out"
    code = sample.main(["--vae", str(tmp_path / "v"), "--ldm", str(tmp_path / "l"), "--prompt", "Female",
                        "--n", str(n), "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "--n" in line and f"1..{MAX_SAMPLES}" in line and not out.exists()


@pytest.mark.parametrize("field, value", [("age", " "), ("sex", ""), ("bmi", "\t"), ("health", "  ")])
def test_a_blank_prompt_field_is_refused_not_dropped(tmp_path, capsys, field, value):
    out = tmp_path / "out"
    code = sample.main(["--vae", str(tmp_path / "v"), "--ldm", str(tmp_path / "l"), f"--{field}", value,
                        "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and f"--{field}: empty value" in line and not out.exists()


def test_the_same_image_set_on_two_sides_of_the_evaluation_is_refused(tmp_path, capsys):
    path = tmp_path / "real.npz"
    path.write_bytes(b"refused before it is read")
    out = tmp_path / "eval" / "metrics.json"
    for flags, named in ((["--real", path, "--fake", path], "--fake"),
                         (["--real", path, "--real-train", tmp_path / "." / "real.npz", "--fake", tmp_path / "f"],
                          "--real-train")):
        code = evaluation_main([str(f) for f in flags] + ["--out", str(out)])
        line = _one_error_line(capsys.readouterr().err)
        assert code == 2 and named in line and "is the same as --real" in line
    assert not out.parent.exists()


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "runs/x/vae.safetensors"),
    OSError(errno.EROFS, "Read-only file system", "runs/x/config.yaml"),
    OSError(errno.ENAMETOOLONG, "File name too long"),
])
def test_train_reports_an_os_error_as_one_line(monkeypatch, capsys, error):
    def fail(args):
        raise error
    monkeypatch.setattr(train, "run", fail)
    code = train.main(["--stage", "vae"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and error.strerror in line and (error.filename or "runs") in line


@pytest.mark.parametrize("content, expected", [
    (b'{"vae": 1', "unreadable stage timings (JSONDecodeError"),  # cut short by a killed writer
    (b"[1, 2]", "stage timings is a JSON list; expected an object"),
    (b"\xff\xfe\x00", "unreadable stage timings (UnicodeDecodeError"),
])
def test_a_damaged_run_json_is_one_clear_error(tmp_path, content, expected):
    path = tmp_path / "timings.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(expected)) as err:
        read_json_object(path, "stage timings")
    assert str(path) in str(err.value)
    assert read_json_object(_write(tmp_path / "ok.json", b'{"vae": 1.5}'), "stage timings") == {"vae": 1.5}


def _write(path, content: bytes):
    path.write_bytes(content)
    return path
