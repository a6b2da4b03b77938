"""Issue 18, class 7: sample ids never collide on disk. One check (data/plan_csv.py:sample_id_problem), used by the
plan reader and by the sample writer, reserves the names the writer derives (<id>_mask.nii.gz, grid.png) and
refuses ids equal up to case; evaluation refuses (no longer skips) a sample whose id ends in _mask."""
import json

import numpy as np
import pytest

from data.errors import InputError
from data.nifti import save_nifti
from data.plan_csv import load_plan, sample_id_problem
from ddpm.sampling import SampleSettings
from evaluation.image_sets import load_sample_folder
from run.samples import SampleRequest, output_files, run_requests
from tests.test_robustness import PROMPT, plan_text, tree

COLLISIONS = {  # ids -> (index of the refused id, fragment)
    ("a", "a_mask"): (1, "reserved"),
    ("a_mask",): (0, "reserved"),
    ("b", "B_Mask"): (1, "reserved"),
    ("grid",): (0, "reserved"),
    ("x", "GRID"): (1, "reserved"),
    ("syn-1", "SYN-1"): (1, "same file name as sample 'syn-1' up to case"),
    ("a", "b", "a"): (2, "duplicate sample id"),
    ("../a",): (0, "expected letters, digits"),
    ("a" * 101,): (0, "at most 100 characters"),
}


@pytest.mark.parametrize("ids", COLLISIONS)
def test_ids_whose_files_collide_are_refused(ids):
    index, fragment = COLLISIONS[ids]
    problem = sample_id_problem(list(ids))
    assert problem is not None and problem[0] == index and fragment in problem[1]


def test_ids_near_the_reserved_names_are_fine():
    ids = ["a", "a_masks", "mask", "a.mask", "grid2", "my_grid", "a-mask"]
    assert sample_id_problem(ids) is None
    files = [name for sid in ids for name in (*output_files(sid, True).values(), f"{sid}.json")] + ["grid.png"]
    assert len({f.lower() for f in files}) == len(files)  # the property the check guarantees: no shared file name


@pytest.mark.parametrize("ids, line, fragment", [
    (("syn-1", "syn-1_mask"), 3, "reserved"),
    (("grid",), 2, "reserved"),
    (("syn-1", "Syn-1"), 3, "up to case"),
])
def test_the_plan_reader_refuses_colliding_ids_naming_the_line(tmp_path, ids, line, fragment):
    (tmp_path / "plan.csv").write_text(plan_text(*({"sample_id": sid} for sid in ids)))
    with pytest.raises(InputError, match=f"plan.csv: line {line} .*sample_id: .*{fragment}"):
        load_plan(tmp_path / "plan.csv")


def test_the_writer_refuses_colliding_ids_before_writing(tmp_path):
    requests = [SampleRequest(sid, PROMPT, 0, np.zeros((2, 8, 8), np.uint8)) for sid in ("a", "a_mask")]
    with pytest.raises(InputError, match="sample id 'a_mask': 'a_mask' is reserved"):
        run_requests(None, requests, tmp_path / "out", SampleSettings(), {})
    assert tree(tmp_path) == []


def test_evaluation_refuses_a_sample_whose_id_ends_in_mask(tmp_path):
    image = np.zeros((8, 8, 2), np.float32)
    for sid in ("a", "b_mask"):  # b_mask: a sample written before such ids were refused
        save_nifti(tmp_path / f"{sid}.nii.gz", image, np.eye(4))
        (tmp_path / f"{sid}.json").write_text(json.dumps({"sample_id": sid, "prompt": PROMPT, "seed": 0}))
    with pytest.raises(InputError, match="b_mask.nii.gz: has a sidecar b_mask.json: a sample whose id ends in '_mask'"):
        load_sample_folder(tmp_path, progress=False)
    (tmp_path / "b_mask.json").unlink()
    (tmp_path / "b_mask.nii.gz").unlink()
    assert load_sample_folder(tmp_path, progress=False).subject_ids == ["a"]
