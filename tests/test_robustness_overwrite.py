"""Issue 18, class 8: outputs never overwrite inputs. One check (data/atomic.py:check_outputs_spare_inputs), run
before anything is written, compares every output path with every input by resolved path and by inode, and
refuses an output inside an input folder where the command reads the whole folder."""
import os

import numpy as np
import pytest

import sample
from data.atomic import check_outputs_spare_inputs
from data.errors import InputError
from ddpm.sampling import SampleSettings
from evaluation.__main__ import main as evaluate_main
from run.samples import SampleRequest, run_requests
from tests.test_robustness import PROMPT, assert_refused, call, tree
from tests.test_sample import tiny_run  # noqa: F401 (fixture)


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "real.npz").write_bytes(b"real")
    (tmp_path / "train.npz").write_bytes(b"train")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "a.json").write_text("{}")
    (tmp_path / "c.yaml").write_text("name: x\n")
    return tmp_path


def _evaluate(capsys, folder, out, *extra):
    return call(capsys, evaluate_main, ["--real", folder / "real.npz", "--fake", folder / "samples", "--out", out,
                                        *extra])


@pytest.mark.parametrize("out, fragments", [
    ("real.npz", ["real.npz", "is the input file"]),
    ("samples/a.json", ["samples/a.json", "lies inside the input folder", "samples"]),
    ("samples/metrics.json", ["lies inside the input folder"]),  # a new name there is read as a sidecar next time
    ("samples/sub/metrics.json", ["lies inside the input folder"]),
    ("c.yaml", ["c.yaml", "is the input file"]),
    ("train.npz", ["train.npz", "is the input file"]),
])
def test_evaluation_refuses_an_output_that_is_an_input(inputs, capsys, out, fragments):
    before = {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()}
    extra = ["--real-train", inputs / "train.npz", "--config", inputs / "c.yaml"]
    code, _, err = _evaluate(capsys, inputs, inputs / out, *extra)
    assert_refused(code, err, ["error:", *fragments, "expected an output path"])
    assert {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()} == before


def test_links_to_an_input_are_the_input(inputs, capsys):
    os.symlink(inputs / "real.npz", inputs / "link.json")
    os.link(inputs / "real.npz", inputs / "hard.json")
    for out in ("link.json", "hard.json"):
        code, _, err = _evaluate(capsys, inputs, inputs / out)
        assert_refused(code, err, [out, "is the input file", "real.npz"])
    os.symlink(inputs / "samples", inputs / "samples_link")
    code, _, err = _evaluate(capsys, inputs, inputs / "samples_link" / "m.json")
    assert_refused(code, err, ["lies inside the input folder"])


def test_a_derived_output_name_is_checked_too(inputs, capsys):
    (inputs / "real.md").write_text("# notes the user keeps")
    code, _, err = call(capsys, evaluate_main, ["--real", inputs / "real.md", "--fake", inputs / "samples", "--out",
                                                inputs / "real.json"])  # .md beside --out is the --real file
    assert_refused(code, err, ["real.md", "is the input file"])


def test_the_check_passes_distinct_paths():
    check_outputs_spare_inputs([__file__ + ".out"], [__file__, None])


def test_sampling_refuses_to_write_over_its_own_mask_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mask_file = out / "s-1_mask.nii.gz"
    mask_file.write_bytes(b"the user's mask")
    request = SampleRequest("s-1", PROMPT, 0, np.zeros((2, 8, 8), np.uint8), {"kind": "file", "ed": str(mask_file)})
    with pytest.raises(InputError, match="s-1_mask.nii.gz: is the input file"):
        run_requests(None, [request], out, SampleSettings(), {})  # refused before the (absent) pipeline is used
    plan = out / "grid.png"
    plan.write_bytes(b"a plan the user named grid.png")
    with pytest.raises(InputError, match="grid.png: is the input file"):
        run_requests(None, [SampleRequest("s-2", PROMPT, 0)], out, SampleSettings(), {}, inputs=[plan])
    assert mask_file.read_bytes() == b"the user's mask" and plan.read_bytes().startswith(b"a plan")


@pytest.mark.slow
def test_sample_cli_refuses_an_out_folder_holding_its_mask_under_an_output_name(tiny_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    mask = out / "sample-000_mask.nii.gz"
    mask.write_bytes((tiny_run / "cohort" / "1000001" / "seg_sa_ED.nii.gz").read_bytes())
    code, _, err = call(capsys, sample.main, ["--run", tiny_run, "--prompt", PROMPT, "--mask", mask, "--out", out])
    assert_refused(code, err, ["sample-000_mask.nii.gz", "is the input file"])
    assert tree(out) == ["sample-000_mask.nii.gz"]
