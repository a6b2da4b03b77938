"""bench.time_to_quality end to end on the smoke config: two recipes, a few steps, every checkpoint scored."""
import json
from pathlib import Path

import pytest
import torch

import train
from bench.time_to_quality import kept_recipes, main, merge, reference_point
from bench.time_to_quality_recipes import RECIPES
from bench.time_to_quality_summary import FIDS, summarise
from data.errors import InputError
from ddpm.checkpoint import load_checkpoint, model_state

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


@pytest.mark.slow
def test_two_recipes_each_checkpoint_scored_against_training_seconds(tmp_path):
    assert train.main(["--config", SMOKE, "--runs", str(tmp_path / "runs"), "--stage", "vae"]) == 0
    run, out = tmp_path / "runs" / "smoke", tmp_path / "ttq.json"
    assert main(["--run", str(run), "--work", str(tmp_path / "work"), "--recipes", "current", "v_ztsnr_min_snr",
                 "--ldm-steps", "2", "--controlnet-steps", "4", "--every", "2", "--n", "8", "--segmenter-steps", "2",
                 "--classifier-epochs", "1", "--fid-repeats", "2", "--out", str(out), "--plot",
                 str(tmp_path / "ttq.png")]) == 0
    result = json.loads(out.read_text())
    assert (tmp_path / "ttq.png").is_file() and set(result["recipes"]) == {"current", "v_ztsnr_min_snr"}
    for name, recipe in result["recipes"].items():
        assert [p["controlnet_step"] for p in recipe["points"]] == [2, 4]
        seconds = [p["train_seconds"] for p in recipe["points"]]
        assert recipe["ldm_seconds"] > 0 and recipe["ldm_seconds"] < seconds[0] < seconds[1]
        assert all(set(p["dice"]) == {"LV", "MYO", "RV"} and min(p[k] for k in FIDS) >= 0 for p in recipe["points"])
        assert all(0 <= p["recovered_health"] <= 1 for p in recipe["points"])  # the prompts' health, recovered
        # the recipe's overrides reached the trained models; the VAE is the run's own, shared
        ldm_cfg = load_checkpoint(tmp_path / "work" / name / "ldm.safetensors", expect_stage="ldm")[1]["config"]
        assert ldm_cfg["diffusion"]["zero_terminal_snr"] == (name != "current")
        assert ldm_cfg["ldm_train"]["steps"] == 2
        assert (tmp_path / "work" / name / "vae.safetensors").read_bytes() == (run / "vae.safetensors").read_bytes()
    rows = result["summary"]["rows"]
    assert rows["current"]["strict"]["speedup_vs_reference"] == 1.0  # it reaches its own final point, no sooner
    assert rows["current"]["within_noise"]["speedup_vs_reference"] >= 1.0
    noise = result["summary"]["reference_noise"]  # from the reference's final checkpoint at a second sample seed
    assert set(noise) == {"mean_dice", *FIDS} and min(noise.values()) >= 0
    # without --resume, a recipe's old checkpoints are refused rather than judged as new ones
    assert main(["--run", str(run), "--work", str(tmp_path / "work"), "--recipes", "current", "--out",
                 str(tmp_path / "x.json")]) == 2 and not (tmp_path / "x.json").exists()
    # --resume: the finished checkpoints are judged again, nothing retrained, the same scores
    final = tmp_path / "work" / "current" / "controlnet.safetensors"
    weights = model_state(load_checkpoint(final)[0], "ema")
    again = tmp_path / "again.json"
    assert main(["--run", str(run), "--work", str(tmp_path / "work"), "--recipes", "current", "--ldm-steps", "2",
                 "--controlnet-steps", "4", "--every", "2", "--n", "8", "--segmenter-steps", "2",
                 "--classifier-epochs", "1", "--fid-repeats", "2", "--out", str(again), "--resume",
                 "--finished", f"main={tmp_path / 'work' / 'current'}"]) == 0
    rejudged = json.loads(again.read_text())["recipes"]["current"]
    # a finished run's final generator, judged alone: the same scores as that recipe's last checkpoint
    finished = json.loads(again.read_text())["recipes"]["main"]
    assert finished["points"] == rejudged["points"][-1:] and finished["ldm_steps"] == 2
    assert rejudged["points"] == result["recipes"]["current"]["points"]
    assert rejudged["ldm_seconds"] == result["recipes"]["current"]["ldm_seconds"]
    assert all(torch.equal(v, weights[k]) for k, v in model_state(load_checkpoint(final)[0], "ema").items())


def test_bad_every_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["--run", str(tmp_path), "--work", str(tmp_path), "--out", str(tmp_path / "x.json"),
              "--controlnet-steps", "5", "--every", "2"])
    assert err.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_add_keeps_recipes_only_from_the_same_settings():
    now = {"run": "r", "n": 8, "ldm_steps": 2, "controlnet_steps": 4, "every": 2, "threads": 1, "overrides": [],
           "fid_repeats": 4,
           "segmenter_dice_on_real_test": {"LV": 0.5}, "recipes": {}}
    before = {**now, "recipes": {"current": {"points": []}}}
    assert kept_recipes(before, now) == {"current": {"points": []}}
    for key, other in (("n", 16), ("segmenter_dice_on_real_test", {"LV": 0.6}), ("overrides", ["sample.steps=10"])):
        with pytest.raises(InputError, match="--add"):
            kept_recipes({**before, key: other}, now)


def test_merge_joins_parts_of_one_design_and_refuses_other_judges(tmp_path, capsys):
    meta = {"run": "r", "n": 8, "ldm_steps": 2, "controlnet_steps": 4, "every": 2, "threads": 1, "overrides": [],
            "fid_repeats": 4, "segmenter_dice_on_real_test": {"LV": 0.5}}
    point = {"controlnet_step": 4, "train_seconds": 10.0, "mean_dice": 0.8, "fid": 5.0, "dice": {"LV": 0.8},
             "ef_abs_error_median": 0.1}
    parts = []
    for i, name in enumerate(("current", "min_snr-seed1")):
        parts.append(tmp_path / f"part{i}.json")
        parts[-1].write_text(json.dumps({**meta, "recipes": {name: {"points": [{**point, "fid": 5.0 - i}]}}}))
    joined = merge(parts)
    assert set(joined["recipes"]) == {"current", "min_snr-seed1"} and joined["merged_from"] == [str(p) for p in parts]
    assert joined["summary"]["rows"]["min_snr-seed1"]["strict"]["step_ratio_vs_reference"] == 1.0
    out = tmp_path / "all.json"
    assert main(["--merge", *map(str, parts), "--out", str(out)]) == 0 and json.loads(out.read_text()) == joined
    assert "| min_snr-seed1 (2) | 4 |" in capsys.readouterr().out
    other = tmp_path / "other.json"  # judges trained differently (another machine or thread count): refused
    other.write_text(json.dumps({**meta, "segmenter_dice_on_real_test": {"LV": 0.6}, "recipes": {"x": {"points": []}}}))
    with pytest.raises(InputError, match="other settings or judges"):
        merge([parts[0], other])
    with pytest.raises(InputError, match="again"):
        merge([parts[0], parts[0]])
    assert main(["--merge", str(parts[0]), str(other), "--out", str(tmp_path / "bad.json")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "bad.json").exists()


def test_reference_from_another_ldm_length_counts_its_own_steps(tmp_path):
    judges = {"run": "r", "n": 8, "threads": 1, "overrides": [], "segmenter_dice_on_real_test": {"LV": 0.5}}
    final = {"controlnet_step": 30, "train_seconds": 60.0, "mean_dice": 0.8, "fid": 5.0}
    path = tmp_path / "long.json"
    path.write_text(json.dumps({**judges, "ldm_steps": 100, "recipes": {"current": {"points": [final]}}}))
    target = reference_point(path, judges)
    assert target["train_steps"] == 130
    short = [{"controlnet_step": 20, "train_seconds": 30.0, "mean_dice": 0.81, "fid": 4.9}]
    rows = summarise({"ldm_steps": 45, "n": 8, "recipes": {"v": {"points": short}}}, reference_final=target)["rows"]
    assert rows["v"]["strict"]["speedup_vs_reference"] == 2.0
    assert rows["v"]["strict"]["step_ratio_vs_reference"] == 130 / 65
    for key, other in (("n", 16), ("overrides", ["sample.steps=10"])):
        with pytest.raises(InputError, match="other judges"):
            reference_point(path, {**judges, key: other})
    path.write_text(json.dumps({**judges, "ldm_steps": 100, "recipes": {}}))
    with pytest.raises(InputError, match="no measured"):
        reference_point(path, judges)


def test_a_recipe_may_name_its_own_ldm_length_and_its_steps_count_it():
    from bench.time_to_quality_recipes import parse_recipe

    assert parse_recipe("v_ztsnr@600", 1800) == (RECIPES["v_ztsnr"], 600)
    assert parse_recipe("current", 1800) == (RECIPES["current"], 1800)
    seeded = [*RECIPES["min_snr"], "ldm_train.seed=3", "controlnet_train.seed=3"]  # both stages, the run's judges
    assert parse_recipe("min_snr@900-seed3", 1800) == (seeded, 900) and parse_recipe("min_snr-seed3", 5) == (seeded, 5)
    assert parse_recipe("lr6e-4-seed2", 5)[0][-1] == "controlnet_train.seed=2"  # a '-' inside the name is kept
    for bad in ("v_ztsnr@0", "v_ztsnr@x", "nope@600", "v_ztsnr@", "current-seed", "current-seedx", "current@9-seed"):
        with pytest.raises(InputError, match="--recipes"):
            parse_recipe(bad, 1800)
    ref = [{"controlnet_step": 10, "train_seconds": 40.0, "mean_dice": 0.8, "fid": 5.0}]
    short = [{"controlnet_step": 10, "train_seconds": 20.0, "mean_dice": 0.8, "fid": 5.0}]
    rows = summarise({"ldm_steps": 90, "n": 8, "recipes": {"current": {"points": ref},
                                                           "v_ztsnr@30": {"ldm_steps": 30, "points": short}}})["rows"]
    fast = rows["v_ztsnr@30"]["strict"]
    assert fast["speedup_vs_reference"] == 2.0 and fast["step_ratio_vs_reference"] == 100 / 40


def test_finished_needs_a_name_and_a_run_with_its_checkpoints(tmp_path):
    from bench.time_to_quality_recipes import parse_finished

    for bad in ("noname", "=x", "current=" + str(tmp_path), "main="):
        with pytest.raises(InputError, match="--finished"):
            parse_finished(bad)
    with pytest.raises(InputError, match="not a finished run: no vae.safetensors"):
        parse_finished(f"main={tmp_path}")


def test_bad_recipe_is_one_line(capsys, tmp_path):
    assert main(["--run", str(tmp_path), "--work", str(tmp_path), "--out", str(tmp_path / "x.json"),
                 "--recipes", "current", "fast@ten"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--recipes" in err[0] and not (tmp_path / "x.json").exists()


def test_report_reprints_the_table_and_summary(capsys, tmp_path):
    point = {"controlnet_step": 2, "train_seconds": 10.0, "mean_dice": 0.8, "dice": {"LV": 0.9, "MYO": 0.7, "RV": 0.8},
             "ef_abs_error_median": 0.05, "fid": 5.0, "fid_segmenter": 0.02, "fid_attributes": 9.0,
             "texture_abs_dx": 0.11}
    out = {"ldm_steps": 8, "n": 4, "recipes": {"current": {"points": [point]},
                                               "v@4": {"ldm_steps": 4, "points": [{**point, "fid_segmenter": 0.03}]}}}
    out["summary"] = summarise(out)
    path = tmp_path / "ttq.json"
    path.write_text(json.dumps(out))
    assert main(["--report", str(path), "--plot", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "| current (8) | 2 | 10 | 0.900 / 0.700 / 0.800 | 0.800 | 0.050 | 5.00 | 20.00 | 9.00 | 0.1100 |" in text
    assert "| v@4 | 2 |" in text and "- v@4: strict: not reached" in text and (tmp_path / "p.png").is_file()
    path.write_text("{}")
    assert main(["--report", str(path)]) == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bad_margins_are_one_line(capsys, tmp_path):
    from bench.time_to_quality import parse_margins

    assert parse_margins(["mean_dice=0.022", "fid=6.4"]) == {"mean_dice": 0.022, "fid": 6.4}
    for bad in (["mean_dice"], ["fid=six"], ["=1"]):
        with pytest.raises(SystemExit):
            main(["--report", str(tmp_path / "x.json"), "--margins", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--margins" in err[0]


def test_prompt_recovery_scores_the_attribute_network_against_what_the_prompts_told():
    import numpy as np
    import pandas as pd

    from bench.time_to_quality import prompt_recovery

    class Net:  # predicts healthy for every image, and one sex
        heads = {"health": ("healthy", "heart_failure"), "sex": ("female", "male")}

        def predict(self, images):
            n = len(images)
            return {"health": np.array(["healthy"] * n, object), "sex": np.array(["male"] * n, object)}

    told = pd.DataFrame({"health": ["healthy", "heart_failure", "healthy", None], "sex": [None, None, None, None]})
    assert prompt_recovery(Net(), np.zeros((4, 2, 8, 8)), told) == {"recovered_health": 2 / 3}  # unknowns skipped


@pytest.mark.slow
def test_a_recipe_that_differs_after_the_ldm_reuses_the_ldm_it_would_train(tmp_path):
    assert train.main(["--config", SMOKE, "--runs", str(tmp_path / "runs"), "--stage", "vae"]) == 0
    run = tmp_path / "runs" / "smoke"
    common = ["--run", str(run), "--ldm-steps", "2", "--controlnet-steps", "2", "--every", "2", "--n", "8",
              "--segmenter-steps", "2", "--classifier-epochs", "1", "--fid-repeats", "2"]
    work, alone = tmp_path / "work", tmp_path / "alone"
    assert main([*common, "--work", str(work), "--recipes", "current", "cn_lr4e-4", "v_ztsnr_min_snr",
                 "--out", str(tmp_path / "ttq.json")]) == 0
    assert main([*common, "--work", str(alone), "--recipes", "cn_lr4e-4", "--out", str(tmp_path / "alone.json")]) == 0

    def ldm(folder: Path) -> dict:
        return model_state(load_checkpoint(folder / "ldm.safetensors", expect_stage="ldm")[0], "ema")

    shared, trained, other = ldm(work / "cn_lr4e-4"), ldm(alone / "cn_lr4e-4"), ldm(work / "v_ztsnr_min_snr")
    # the reused LDM is the one training it gives; an LDM of other settings is not reused
    assert all(torch.equal(shared[k], trained[k]) for k in trained)
    assert not all(torch.equal(shared[k], other[k]) for k in other)
    recipes = json.loads((tmp_path / "ttq.json").read_text())["recipes"]
    assert recipes["cn_lr4e-4"]["ldm_seconds"] == recipes["current"]["ldm_seconds"]  # its time counts the LDM's
    meta = load_checkpoint(work / "cn_lr4e-4" / "controlnet.safetensors", expect_stage="controlnet")[1]
    assert meta["config"]["controlnet_train"]["lr"] == 4e-4 and RECIPES["cn_lr4e-4"][-1] == "controlnet_train.lr=4e-4"
    # the ControlNets differ (another lr), the twin's files were left as they were
    assert recipes["cn_lr4e-4"]["points"] != recipes["current"]["points"]
    assert all(torch.equal(v, ldm(work / "current")[k]) for k, v in shared.items())
