"""Issue 18, class 9 (and the synthetic CLI's share of 11 and 13): `python -m data.synthetic` deletes only files its
manifest says it wrote, byte-for-byte unchanged; sizes are capped before rendering; OS errors are one line."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import InputError
from data.synthetic import MARKER, SUBJECT_FILES, generate_cohort, main

ROOT = Path(__file__).resolve().parents[1]
SMALL = (32, 32, 2)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_the_marker_lists_every_written_file_with_its_hash(tmp_path):
    out = generate_cohort(tmp_path / "c", 2, shape=SMALL)
    files = json.loads((out / MARKER).read_text())["files"]
    assert sorted(files) == sorted(f"{eid}/{name}" for eid in ("1000001", "1000002") for name in SUBJECT_FILES)
    assert all(hashlib.sha256((out / name).read_bytes()).hexdigest() == digest for name, digest in files.items())


def test_regenerating_removes_only_unchanged_files_it_wrote(tmp_path):
    out = generate_cohort(tmp_path / "c", 3, shape=SMALL)
    (out / "1000002" / "sa_ES.nii.gz").write_bytes(b"a user's own edit")  # ours once, changed since
    (out / "1000003" / "notes.txt").write_text("a user's file in a subject folder")
    (out / "1000007").mkdir()  # a digit-named folder we never wrote, holding one of our file names
    (out / "1000007" / "sa_ED.nii.gz").write_bytes((out / "1000001" / "sa_ED.nii.gz").read_bytes())
    (out / "4242").mkdir()
    (out / "4242" / "seg_sa_ED.nii.gz").write_bytes(b"someone else's")
    generate_cohort(out, 1, shape=SMALL)
    assert _files(out) == ["1000001/sa_ED.nii.gz", "1000001/sa_ES.nii.gz", "1000001/seg_sa_ED.nii.gz",
                           "1000001/seg_sa_ES.nii.gz", "1000002/sa_ES.nii.gz", "1000003/notes.txt",
                           "1000007/sa_ED.nii.gz", "4242/seg_sa_ED.nii.gz", "metadata.csv", MARKER]
    assert (out / "1000002" / "sa_ES.nii.gz").read_bytes() == b"a user's own edit"


def test_a_marker_without_a_manifest_or_a_forged_one_deletes_nothing(tmp_path):
    out = generate_cohort(tmp_path / "c", 3, shape=SMALL)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    record = json.loads((out / MARKER).read_text())
    forged = {**record["files"], "../precious.txt": hashlib.sha256(b"keep").hexdigest(),
              "1000003/../../precious.txt": hashlib.sha256(b"keep").hexdigest()}
    (out / MARKER).write_text(json.dumps({**record, "files": forged}))
    generate_cohort(out, 2, shape=SMALL)
    assert outside.read_text() == "keep" and not (out / "1000003").exists()  # 1000003 was listed and unchanged
    generate_cohort(out, 3, shape=SMALL)
    (out / MARKER).write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))  # an older marker
    generate_cohort(out, 1, shape=SMALL)
    assert (out / "1000003" / "sa_ED.nii.gz").is_file(), "no manifest: nothing counts as ours"


def test_a_killed_run_still_lists_what_earlier_runs_wrote(tmp_path, monkeypatch):
    import data.synthetic as synthetic

    out = generate_cohort(tmp_path / "c", 3, shape=SMALL)

    def interrupted(*args, **kwargs):  # Ctrl-C while the first subject renders
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "render_subject", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_cohort(out, 1, seed=5, shape=SMALL)
    monkeypatch.undo()
    assert len(json.loads((out / MARKER).read_text())["files"]) == 12
    generate_cohort(out, 1, shape=SMALL)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["1000001"]


@pytest.mark.parametrize("argv, fragments", [
    (["--n", "1", "--shape", "100000", "100000", "100"], ["shape", "(100000, 100000, 100)", "limit"]),
    (["--n", "10000000000"], ["n", "positive integer <= 1,000,000"]),
])
def test_sizes_are_capped_before_anything_is_rendered(tmp_path, capsys, argv, fragments):
    assert main(["--out", str(tmp_path / "c"), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and all(f in err for f in fragments), err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("make_out, fragment", [
    (lambda t: (t / "file").write_text("x") and t / "file" / "sub", "Not a directory"),
    (lambda t: t / ("x" * 300), "File name too long"),
])
def test_os_errors_are_one_line_through_python_m(tmp_path, make_out, fragment):
    out = make_out(tmp_path)
    done = subprocess.run([sys.executable, "-m", "data.synthetic", "--out", str(out), "--n", "1", "--shape", "32", "32",
                           "2"], cwd=ROOT, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert fragment in errors[0] and "expected a writable output folder" in errors[0]


def test_library_callers_get_the_same_checks(tmp_path):
    with pytest.raises(InputError, match=r"^shape: shape \(8192, 8192, 8192\)"):
        generate_cohort(tmp_path / "c", 1, shape=(8192, 8192, 8192))
    assert not (tmp_path / "c").exists()
