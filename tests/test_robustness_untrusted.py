"""Issue 18, classes 11-13, 15, 16: untrusted files and settings through the library and the real entry points.

11 bombs: sizes a header/config merely claims are checked (data/limits.py) before anything is allocated (file bombs:
tests/test_robustness_bombs.py; here a checkpoint's config);
12 non-finite settings or weights never write a sample; 13 malformed checkpoint metadata and out-of-range seeds are
one line; 15 int checkpoint tensors and seed -1 are refused, not coerced; 16 a FIFO is called a FIFO, a grey+alpha
PNG is read as grey. Every refusal: exit 2, one `error:` line naming the file or field, nothing written."""
import json
import math
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import run.pipeline  # noqa: F401 - imported before any tracemalloc window: import costs are not the input's
import run.config  # noqa: F401
import sample
import train
from ddpm.sampling import SampleSettings
from run.samples import SampleRequest, run_requests
from data.errors import InputError
from data.mask_input import read_mask_file
from data.nifti import load_nifti
from data.plan_csv import load_plan
from data.ukbb import read_metadata
from ddpm.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from run.loader import read_config_file
from tests.fixtures import write_acdc_fixture, write_ukbb_fixture
from tests.test_robustness import (PROMPT, SMOKE, assert_refused, call, plan_text,  # noqa: F401
                                   run)  # run: the trained smoke run fixture
from tests.test_robustness_bombs import MiB


# ------------------------------------------------------------------- checkpoints: rewritten headers and tensors

def _rewrite_checkpoint(src: Path, dst: Path, meta=None, raw_meta=None, tensors=None, drop_meta=False) -> Path:
    """A copy of src with its JSON metadata and/or tensors replaced (as an attacker or a broken tool would)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as handle:
        header = dict(handle.metadata())
    if meta is not None:
        header["meta"] = json.dumps(meta)
    if raw_meta is not None:
        header["meta"] = raw_meta
    if drop_meta:
        header.pop("meta")
    flat = load_file(str(src))
    if tensors is not None:
        flat = tensors(flat)
    save_file(flat, str(dst), metadata=header)
    return dst


def _meta(path: Path) -> dict:
    return load_checkpoint(path)[1]


def _with_config(path: Path, section: str, values: dict) -> dict:
    meta = _meta(path)
    meta["config"][section].update(values)
    return meta


def _sample(capsys, run, tmp_path, *extra, ldm=None):
    out = tmp_path / "out"
    argv = ["--vae", run.vae, "--ldm", ldm or run.ldm, "--prompt", PROMPT, "--out", out, "sample.steps=1", *extra]
    code, _, err = call(capsys, sample.main, argv)
    return code, err, out


# ----------------------------------------------------------------------------- class 11: a checkpoint's config

@pytest.mark.parametrize("section, values, fragments", [
    ("text", {"layers": 10**9}, ["config.text.layers", "expected an integer in [1, 64]", "1000000000"]),
    ("text", {"width": 1 << 30}, ["config.text.width", "[1, 4096]"]),
    ("unet", {"base_channels": 10**6}, ["config.unet.base_channels", "[1, 1024]"]),
    ("unet", {"base_channels": 1024, "channel_mult": [1, 16]}, ["unet.channel_mult", "16384 channels", "at most 4096"]),
    ("unet", {"num_res_blocks": 10**5}, ["config.unet.num_res_blocks", "[1, 8]"]),
    ("unet", {"channel_mult": [1] * 10**5}, ["config.unet.channel_mult", "at most 8 items, got 100000"]),
])
def test_a_checkpoint_config_claiming_a_huge_model_is_refused_before_building(run, tmp_path, capsys, section, values,
                                                                             fragments):
    bomb = _rewrite_checkpoint(run.ldm, tmp_path / "ldm.safetensors", meta=_with_config(run.ldm, section, values))
    tracemalloc.start()
    code, err, out = _sample(capsys, run, tmp_path, ldm=bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_refused(code, err, ["ldm.safetensors", *fragments])
    assert not out.exists() and peak < 256 * MiB, f"{peak / MiB:.0f} MiB"


# -------------------------------------------------------------------------------- class 12: non-finite sampling

@pytest.mark.parametrize("flags, fragments", [
    (["sample.guidance=nan"], ["guidance", "expected a finite number", "nan"]),
    (["sample.guidance=inf"], ["guidance", "finite", "inf"]),
    (["sample.guidance=-inf"], ["guidance", "finite"]),
    (["sample.control_scale=nan"], ["control_scale", "finite"]),
    (["sample.eta=nan"], ["eta", "finite", "nan"]),
    (["sample.eta=-1"], ["eta", "[0, inf)"]),
])
def test_non_finite_sampling_settings_write_nothing(run, tmp_path, capsys, flags, fragments):
    code, err, out = _sample(capsys, run, tmp_path, *flags)
    assert_refused(code, err, fragments)
    assert not out.exists()


@pytest.mark.parametrize("group", ["ema", "model"])
def test_non_finite_weights_are_refused_at_load_and_write_nothing(run, tmp_path, capsys, group):
    def poison(flat):
        name = next(k for k in flat if k.startswith(f"{group}.unet."))
        flat[name] = flat[name].clone()
        flat[name].view(-1)[0] = math.nan
        return flat

    broken = _rewrite_checkpoint(run.ldm, tmp_path / "ldm.safetensors", tensors=poison)
    code, err, out = _sample(capsys, run, tmp_path, ldm=broken)
    assert_refused(code, err, ["ldm.safetensors", f"tensor {group}.unet.", "NaN/Inf", "expected finite values"])
    assert not out.exists()


def test_a_sample_that_comes_out_nan_is_not_written_or_marked_complete(run, tmp_path):
    """A fault at run time (here: a decoder bias turned NaN in memory after the checked load) is caught on the
    decoded batch, before any of its files; a rerun regenerates it instead of skipping it as complete."""
    from run.pipeline import load_pipeline

    pipe = load_pipeline(run.vae, run.ldm)
    last_conv = [m for m in pipe.vae.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    saved = last_conv.bias.detach().clone()
    requests = [SampleRequest("s0", PROMPT, 0), SampleRequest("s1", PROMPT, 1)]
    with torch.no_grad():
        last_conv.bias.fill_(math.nan)
    with pytest.raises(InputError, match=r"sampling: sample\(s\) s0, s1 came out NaN/Inf \(guidance 4.0"):
        run_requests(pipe, requests, tmp_path / "out", SampleSettings(steps=1), {}, progress=False)
    assert not (tmp_path / "out").exists()
    with torch.no_grad():
        last_conv.bias.copy_(saved)
    done, skipped = run_requests(pipe, requests, tmp_path / "out", SampleSettings(steps=1), {}, progress=False)
    assert done == ["s0", "s1"] and skipped == []  # nothing of the failed call counts as complete


# ------------------------------------------------------------------- class 13: malformed checkpoint metadata

CHECKPOINT_FAULTS = {  # name -> (rewrite kwargs, fragments)
    "meta not JSON": ({"raw_meta": "{not json"}, ["metadata 'meta' is not valid JSON"]),
    "meta a list": ({"meta": [1, 2]}, ["metadata 'meta' is a JSON list; expected an object"]),
    "meta a string": ({"meta": "ldm"}, ["JSON str"]),
    "meta deeply nested": ({"raw_meta": "[" * 100_000 + "]" * 100_000}, ["not valid JSON", "RecursionError"]),
    "no meta field": ({"drop_meta": True}, ["no 'meta' field"]),
    "no config": ({"meta": {"stage": "ldm"}}, ["no 'config' object"]),
    "config a list": ({"meta": {"stage": "ldm", "config": [1]}}, ["no 'config' object"]),
    "step not an integer": ({"meta": {"stage": "ldm", "config": {}, "step": "ten"}}, ["'step' is 'ten'"]),
    "stage a huge string": ({"meta": {"stage": "x" * 100_000}}, ["checkpoint of stage 'xxxx", "expected a 'ldm'"]),
    "config section a list": ({"meta": {"stage": "ldm", "config": {"unet": [1, 2]}}},
                              ["config.unet", "expected a mapping for section UNetConfig"]),
}


@pytest.mark.parametrize("fault", CHECKPOINT_FAULTS)
def test_malformed_checkpoint_metadata_is_one_line(run, tmp_path, capsys, fault):
    kwargs, fragments = CHECKPOINT_FAULTS[fault]
    broken = _rewrite_checkpoint(run.ldm, tmp_path / "ldm.safetensors", **kwargs)
    code, err, out = _sample(capsys, run, tmp_path, ldm=broken)
    line = assert_refused(code, err, ["ldm.safetensors", *fragments])
    assert len(line) < 600 and not out.exists()


def test_tensor_names_must_be_grouped(tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "c.safetensors"),
              metadata={"format": FORMAT, "meta": "{}", "extras": "{}"})
    with pytest.raises(InputError, match="tensor name 'weight'; expected '<group>.<key>'"):
        load_checkpoint(tmp_path / "c.safetensors")


@pytest.mark.parametrize("flags, fragment", [
    (["--seed", "-1"], "seed -1; expected an integer in [0, 2^64)"),
    (["--seed", str(2**64 - 1), "--n", "2"], f"seed {2**64}"),
    (["--seed", str(2**70)], "expected an integer in [0, 2^64)"),
])
def test_seeds_outside_the_generator_range_are_refused(run, tmp_path, capsys, flags, fragment):
    code, err, out = _sample(capsys, run, tmp_path, *flags)
    assert_refused(code, err, ["seed", fragment])
    assert not out.exists()


def test_the_batch_api_refuses_seeds_that_are_not_integers(run, tmp_path):
    from run.pipeline import load_pipeline

    pipe = load_pipeline(run.vae, run.ldm)
    for seed in (True, 1.5, "3", -5):
        with pytest.raises(InputError, match="seed"):
            run_requests(pipe, [SampleRequest("s", PROMPT, seed)], tmp_path / "out", SampleSettings(steps=1), {})
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- class 15: coercions refused

@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_weights_are_refused_not_cast(run, tmp_path, capsys, dtype):
    def to_int(flat):
        return {k: (v.round().to(dtype) if k.startswith("ema.") else v) for k, v in flat.items()}

    broken = _rewrite_checkpoint(run.ldm, tmp_path / "ldm.safetensors", tensors=to_int)
    code, err, out = _sample(capsys, run, tmp_path, ldm=broken)
    assert_refused(code, err, ["ldm.safetensors", "tensor ema.", f"dtype {str(dtype).replace('torch.', '')}",
                               "expected floating-point weights"])


@pytest.mark.parametrize("header, repeated", [("eid,sex,age,bmi,health,health", "health"),
                                              ("eid,sex,age,bmi,health, Health ", "health"),
                                              ("eid,sex,age,bmi,age,health", "age")])
def test_a_metadata_csv_with_a_disagreeing_repeated_column_is_refused(tmp_path, capsys, header, repeated):
    root = write_ukbb_fixture(tmp_path / "cohort")
    lines = (root / "metadata.csv").read_text().splitlines()
    columns = lines[0].split(",")
    other = {"health": "heart_failure", "age": "77"}[repeated]  # the second copy disagrees with the first
    names = [n.strip().lower() for n in header.split(",")]
    body = [",".join(other if n == repeated and i != names.index(n) else row.split(",")[columns.index(n)]
                     for i, n in enumerate(names)) for row in lines[1:]]
    (root / "metadata.csv").write_text("\n".join([header, *body]) + "\n")
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", tmp_path / "runs", "--data", root,
                                             "--stage", "vae"])
    assert_refused(code, err, ["metadata.csv", f"column {repeated!r} appears 2 times", "expected each column once"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("repeat", ["health", "seed", "prompt"])
def test_a_plan_with_a_repeated_column_is_refused(run, tmp_path, capsys, repeat):
    """The plan's second copy of a column disagrees with the first; pandas would read the first silently."""
    lines = plan_text({}).splitlines()
    other = {"health": "healthy", "seed": "99", "prompt": '"Male, age in 70s, normal BMI, healthy"'}[repeat]
    (tmp_path / "plan.csv").write_text(f"{lines[0]},{repeat}\n{lines[1]},{other}\n")
    shutil.copy(run.ed, tmp_path / "mask.nii.gz")
    code, _, err = call(capsys, sample.main, ["--run", run.dir, "--plan", tmp_path / "plan.csv", "--out", tmp_path / "out"])
    assert_refused(code, err, ["plan.csv", f"column {repeat!r} appears 2 times", "expected each column once"])
    assert not (tmp_path / "out").exists()


def test_batchnorm_counters_stay_loadable(tmp_path):
    model = torch.nn.BatchNorm1d(3)
    save_checkpoint(tmp_path / "c.safetensors", {"model": model.state_dict()}, {"stage": "toy"})
    states, _ = load_checkpoint(tmp_path / "c.safetensors", expect_stage="toy")
    assert states["model"]["num_batches_tracked"].dtype == torch.int64


# ------------------------------------------------------------------------------- class 16: misleading messages

def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("reader, name, expected", [
    (load_nifti, "m.nii.gz", "expected a NIfTI file, found a FIFO (named pipe)"),
    (read_mask_file, "m.png", "expected a PNG file, found a FIFO (named pipe)"),
    (load_checkpoint, "c.safetensors", "expected a safetensors checkpoint, found a FIFO"),
    (read_config_file, "c.yaml", "config file, found a FIFO"),
    (load_plan, "plan.csv", "expected a plan CSV, found a FIFO"),
    (read_metadata, "metadata.csv", "metadata CSV, found a FIFO"),
])
def test_a_fifo_is_called_a_fifo_and_never_opened(tmp_path, reader, name, expected):
    path = _fifo(tmp_path / name)  # opening it for reading would block forever: the check must come first
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        reader(path)


def test_a_directory_is_still_called_a_directory(tmp_path):
    (tmp_path / "m.nii.gz").mkdir()
    with pytest.raises(InputError, match="expected a NIfTI file, found a directory"):
        load_nifti(tmp_path / "m.nii.gz")


def test_grey_plus_alpha_png_reads_as_grey_and_transparency_is_named(tmp_path):
    grey = np.zeros((32, 32), np.uint8)
    grey[8:20, 8:20] = 85
    Image.fromarray(grey).save(tmp_path / "grey.png")
    opaque = np.full((32, 32), 255, np.uint8)
    Image.fromarray(np.stack([grey, opaque], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.stack([grey, grey, grey, opaque], -1), "RGBA").save(tmp_path / "rgba.png")
    reference = read_mask_file(tmp_path / "grey.png")[0]
    for name in ("la.png", "rgba.png"):
        assert np.array_equal(read_mask_file(tmp_path / name)[0], reference), name
    clear = opaque.copy()
    clear[0, 0] = 0
    Image.fromarray(np.stack([grey, clear], -1), "LA").save(tmp_path / "clear.png")
    with pytest.raises(InputError, match=r"clear.png: PNG with transparent pixels \(mode LA\)"):
        read_mask_file(tmp_path / "clear.png")
    colour = np.stack([grey, grey // 2, grey, opaque], -1)
    Image.fromarray(colour, "RGBA").save(tmp_path / "colour.png")
    with pytest.raises(InputError, match=r"colour PNG \(mode RGBA\)"):
        read_mask_file(tmp_path / "colour.png")


def test_acdc_info_cfg_with_a_utf8_bom_reads_like_without(tmp_path):
    from data.acdc import read_info

    root = write_acdc_fixture(tmp_path / "acdc")
    info = next(root.glob("*/Info.cfg"))
    plain = read_info(info)
    info.write_bytes(b"\xef\xbb\xbf" + info.read_bytes())  # Windows editors save one; it used to read as "missing ED"
    assert read_info(info) == plain and "ED" in plain
