import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.errors import InputError
from data.nifti import save_nifti
from data.slices import SliceSet
from evaluation.__main__ import main, parse_args
from evaluation.features import segmenter_extractor
from evaluation.fid import real_vs_real_bound
from evaluation.image_sets import ImageSet, as_image_set, load_image_set
from data.json_ready import json_ready as plain
from evaluation.held_out import control_fidelity
from evaluation.report import EvalConfig, bound_capacity, fid_block, markdown_table
from evaluation.segmenter import Segmenter, SegmenterConfig, train_segmenter
from tests.test_features import toy_slices

AFFINE = np.diag([2.0, 2.0, 1.0, 1.0])
CFG = EvalConfig(fid_n=40, fid_repeats=2, kid_subsets=5, kid_subset_size=20, segmenter_steps=120,
                 attribute_epochs=1, segmenter_base=8, segmenter_batch_size=8)


def write_samples(folder: Path, data: SliceSet, masks: bool = True) -> Path:
    """sample.py's layout: <id>.nii.gz (S, S, 2), <id>_mask.nii.gz, <id>.json with prompt and seed."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(data)):
        save_nifti(folder / f"g{i:03d}.nii.gz", np.moveaxis(data.images[i], 0, -1), AFFINE)
        if masks:
            save_nifti(folder / f"g{i:03d}_mask.nii.gz", np.moveaxis(data.masks[i], 0, -1), AFFINE)
        sidecar = {"sample_id": f"g{i:03d}", "prompt": data.prompts[i], "seed": i, "pixel_mm": 2.0}
        (folder / f"g{i:03d}.json").write_text(json.dumps(sidecar))
    return folder


def noise_like(data: SliceSet, seed: int = 0) -> ImageSet:
    images = np.random.default_rng(seed).uniform(-1, 1, data.images.shape)
    return ImageSet(images, data.masks, data.subject_ids, data.attributes, "noise")


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    train, test = toy_slices(16, 2, seed=0), toy_slices(12, 4, seed=1, prefix="t")
    fake = toy_slices(12, 4, seed=2, prefix="f")  # same generator, other seeds: a realistic fake
    model = train_segmenter(train.images, train.masks, SegmenterConfig(base=8), steps=120, batch_size=8)
    return train, test, fake, model


@pytest.mark.slow
def test_fid_of_realistic_fakes_is_finite_and_below_that_of_noise(toy):
    train, test, fake, model = toy
    extract = segmenter_extractor(model, len(train), progress=False)
    real = extract(test.images)
    good = fid_block(real, test.subject_ids, extract(fake.images), CFG)
    bad = fid_block(real, test.subject_ids, extract(noise_like(fake).images), CFG)
    assert good["n_per_side"] == bad["n_per_side"] == min(CFG.fid_n, bound_capacity(test.subject_ids)) == 24
    assert np.isfinite([good["fake_vs_real"]["mean"], bad["fake_vs_real"]["mean"]]).all()
    assert good["fake_vs_real"]["mean"] < bad["fake_vs_real"]["mean"]
    assert good["kid"]["mean"] < bad["kid"]["mean"]


def test_bound_capacity_is_what_every_subject_halving_can_supply():
    ids = np.repeat(["a", "b", "c", "d", "e"], [1, 3, 5, 2, 7])
    rng = np.random.default_rng(0)
    worst = min(np.isin(ids, rng.permutation(np.unique(ids))[:2]).sum() for _ in range(200))
    assert bound_capacity(ids) == worst == 3


def test_bound_splits_real_images_by_subject():
    # each subject's images are near copies: halves drawn by image share subjects and look alike (FID ~ 0)
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(6), 40)
    feats = rng.normal(size=(6, 2))[ids] + 0.01 * rng.normal(size=(len(ids), 2))
    bound = fid_block(feats, ids, feats, EvalConfig(fid_n=100, fid_repeats=4))["real_vs_real_bound"]["mean"]
    by_image = real_vs_real_bound(feats, np.arange(len(ids)), 100, 4)[0]
    assert bound > 5 * by_image


@pytest.mark.slow
def test_dice_is_high_on_real_test_images_and_low_on_noise(toy):
    _, test, _, model = toy
    out = control_fidelity(model, as_image_set(test), noise_like(test), spacing_mm=2.0)
    real, noise = out["real_test"], out["fake"]
    assert min(real["dice"].values()) > 0.75, real["dice"]
    assert max(noise["dice"].values()) < 0.4, noise["dice"]
    assert real["descriptor_mae"]["ed_lv_area_mm2_mae"] < noise["descriptor_mae"]["ed_lv_area_mm2_mae"]


def test_vae_reconstruction_side_is_the_real_side_when_reconstructions_are_exact_and_rejects_other_shapes():
    torch.manual_seed(0)
    test = toy_slices(4, 2, seed=1, prefix="t")
    model = Segmenter(SegmenterConfig(base=8)).eval()  # untrained: the identity holds for any segmenter
    positions = ["basal", "apical", None, "apical"] * (len(test) // 4)
    out = control_fidelity(model, as_image_set(test), noise_like(test), 2.0, reconstructed=test.images.copy(),
                           positions={"real_test": positions, "fake": positions})
    assert plain(out["vae_reconstruction"]) == plain(out["real_test"])
    assert "ef_proxy_signed_error_median" in out["fake"]
    by_position = out["fake"]["by_position"]  # base to apex; an unknown position is left out
    assert list(by_position) == ["basal", "apical"] and by_position["apical"]["n"] == positions.count("apical")
    with pytest.raises(InputError, match="reconstructed"):
        control_fidelity(model, as_image_set(test), noise_like(test), 2.0, reconstructed=test.images[:2])


def test_sample_folder_round_trips(tmp_path):
    data = toy_slices(2, 2, seed=5)
    loaded = load_image_set(write_samples(tmp_path / "fake", data), progress=False)
    np.testing.assert_allclose(loaded.images, data.images, atol=1e-6)
    np.testing.assert_array_equal(loaded.masks, data.masks)
    assert loaded.prompts == data.prompts and loaded.pixel_mm == 2.0
    assert loaded.attributes["age"].isna().all()  # generated: only the prompt's bins are known


@pytest.mark.slow
def test_cli_writes_metrics_markdown_and_figure(toy, tmp_path, capsys):
    train, test, fake, _ = toy
    real_path, train_path = test.save(tmp_path / "test.npz"), train.save(tmp_path / "train.npz")
    fake_dir = write_samples(tmp_path / "fake", fake)
    out = tmp_path / "eval" / "metrics.json"
    code = main(["--real", str(real_path), "--real-train", str(train_path), "--fake", str(fake_dir),
                 "--out", str(out), "evaluation.fid_n=40", "evaluation.fid_repeats=2",
                 "evaluation.kid_subsets=5", "evaluation.segmenter_steps=60", "evaluation.attribute_epochs=1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert metrics["extractor"]["name"] == f"domain segmenter encoder (trained here on {len(train)} real images)"
    assert any("no FID Inception weights" in note for note in metrics["notes"])
    assert metrics["fid"]["n_per_side"] == 24 and metrics["fid"]["fake_vs_real"]["mean"] >= 0
    assert set(metrics["control_fidelity"]["fake"]["dice"]) == {"LV", "MYO", "RV"}
    assert metrics["data"]["spacing_mm"] == 2.0 and metrics["data"]["fake"]["n_images"] == len(fake)
    assert metrics["ms_ssim"]["n_condition_groups"] == 0  # every toy fake has its own mask
    assert set(metrics["attribute_fidelity"]["fake"]) == {"sex", "age_decade", "bmi_category", "health", "slice_position"}
    assert "skipped" in metrics["attribute_fidelity"]["fake"]["slice_position"]  # toy prompts carry no position
    assert metrics["subgroup_fid"]["sex"]["female"]["n_fake"] == 24
    assert "skipped" in metrics["subgroup_fid"]["bmi_category"].get("underweight", {"skipped": ""})
    table = out.with_suffix(".md").read_text()
    assert "| FID (n=24/side, 2 repeats) |" in table and metrics["extractor"]["name"] in table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FID" in capsys.readouterr().out


@pytest.fixture
def real_npz(tmp_path):
    return toy_slices(2, 1, seed=6).save(tmp_path / "real.npz")


def _run_expecting_error(capsys, real_npz, fake, out):
    code = main(["--real", str(real_npz), "--fake", str(fake), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_empty_folder_is_one_line_error(tmp_path, capsys, real_npz):
    (tmp_path / "empty").mkdir()
    err = _run_expecting_error(capsys, real_npz, tmp_path / "empty", tmp_path / "m.json")
    assert "empty" in err and "no samples" in err
    assert not (tmp_path / "m.json").exists()


def test_nan_image_is_one_line_error_naming_the_file(tmp_path, capsys, real_npz):
    folder = write_samples(tmp_path / "fake", toy_slices(2, 1, seed=7))
    image = np.moveaxis(toy_slices(1, 1, seed=7).images[0], 0, -1).copy()
    image[3, 4, 1] = np.nan
    save_nifti(folder / "g001.nii.gz", image, AFFINE)
    assert "g001.nii.gz" in _run_expecting_error(capsys, real_npz, folder, tmp_path / "m.json")


def test_mixed_sizes_are_one_line_error(tmp_path, capsys, real_npz):
    folder = write_samples(tmp_path / "fake", toy_slices(1, 1, size=32, seed=8))
    small = toy_slices(1, 1, size=16, seed=8)
    write_samples(tmp_path / "small", small)
    for suffix in (".nii.gz", "_mask.nii.gz", ".json"):
        (tmp_path / "small" / f"g000{suffix}").rename(folder / f"g999{suffix}")
    err = _run_expecting_error(capsys, real_npz, folder, tmp_path / "m.json")
    assert "g999.nii.gz" in err and "differs" in err


def test_missing_sidecar_and_size_mismatch_with_real_are_one_line_errors(tmp_path, capsys, real_npz):
    folder = write_samples(tmp_path / "fake", toy_slices(1, 1, seed=9))
    (folder / "g000.json").unlink()
    assert "g000.json" in _run_expecting_error(capsys, real_npz, folder, tmp_path / "m.json")
    small = write_samples(tmp_path / "small", toy_slices(2, 2, size=16, seed=9))
    assert "image size 16" in _run_expecting_error(capsys, real_npz, small, tmp_path / "m.json")


def test_help_describes_the_inputs(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--real", "--fake", "--real-train", "--inception-weights", "--spacing-mm", "--out", "evaluation.fid_n"):
        assert flag in text


def test_plain_turns_nan_into_null_and_markdown_survives_skips():
    assert plain({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)], "c": None}) == {"a": None, "b": [1.5, 2],
                                                                                       "c": None}
    skipped = {"extractor": {"name": "x"}, "fid": {"skipped": "too few"}, "subgroup_fid": {"sex": {}},
               "control_fidelity": {"skipped": "no masks"}, "attribute_fidelity": {"fake": {}, "real_test": {}},
               "ms_ssim": {"n_condition_groups": 0, "fake_same_condition": None, "fake_all": None,
                           "real_test_all": None},
               "memorisation": {"ratio": None, "fake_to_train_median": None, "real_test_to_train_median": None}}
    table = markdown_table(skipped)
    assert "too few" in table and "no masks" in table and "no sex labels" in table
    side = {"dice": {"LV": 0.9, "MYO": 0.8, "RV": 0.7}, "descriptor_mae": {f"{k}_mae": 1.0 for k in (
        "ed_lv_area_mm2", "ed_wall_thickness_mm", "ef_proxy")}, "ef_proxy_abs_error_median": 0.05,
        "ef_proxy_signed_error_median": -0.02}
    control = {name: {**side, "by_position": {"apical": {"n": 3, **side}}} for name in ("fake", "real_test")}
    table = markdown_table({**skipped, "control_fidelity": control})
    assert "## Control fidelity by slice position" in table and "| apical | 3 / 3 | 0.9 / 0.8 / 0.7 |" in table


def test_input_error_for_unknown_path(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image_set(tmp_path / "absent")
