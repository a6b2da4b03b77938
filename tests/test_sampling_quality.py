"""bench.sampling_quality's bookkeeping: settings, the reference's noise band, equal-quality verdicts, speed ratios."""
import numpy as np

from bench.sampling_quality import settings, summarise


def _result(name, ips, dice, ef=0.1, fid=10.0, per_image=None, texture=0.10):
    per_image = per_image or {k: [v] * 4 for k, v in dice.items()}
    return {"name": name, "images_per_s": ips, "images_per_cpu_s": ips / 2, "dice": dice, "dice_per_image": per_image,
            "ef_abs_error_median": ef, "fid": fid, "texture_abs_dx": texture}


def test_settings_have_unique_names_and_the_rows_the_summary_needs():
    names = [s.name for s in settings(1.0, 4.0)]
    assert len(names) == len(set(names))
    assert {"ref: ddim 20", "ref: ddim 20, seed 2", "diffusers default (PNDM) 20"} <= set(names)
    assert all(s.precision in ("fp32", "bf16") for s in settings(4.0, 4.0))
    assert {s.precision for s in settings(1.0, 4.0) if "bf16" in s.name} == {"bf16"}


def test_summary_tolerance_is_the_seed_spread_and_worse_rows_are_named():
    dice = {"LV": 0.80, "MYO": 0.70}
    rng = np.random.default_rng(0)
    per_image = {k: list(v + 0.01 * rng.standard_normal(100)) for k, v in dice.items()}
    out = {"results": [
        _result("ref: ddim 20", 2.0, dice, per_image=per_image),
        _result("ref: ddim 20, seed 2", 2.1, {"LV": 0.79, "MYO": 0.70}, ef=0.11, fid=10.5),
        _result("diffusers default (PNDM) 20", 1.0, dice),
        _result("fast", 5.0, {"LV": 0.795, "MYO": 0.70}, ef=0.105, fid=10.4),
        _result("too fast", 8.0, {"LV": 0.70, "MYO": 0.70}, fid=12.0)]}
    summary = summarise(out)
    assert abs(summary["tolerance"]["LV"] - 0.01) < 1e-9 and abs(summary["tolerance"]["FID"] - 0.5) < 1e-9
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["fast"]["equal_quality"] and rows["fast"]["speed_vs_diffusers_default_wall"] == 5.0
    assert rows["too fast"]["worse_on"] == ["LV", "FID"]
    assert rows["ref: ddim 20"]["speed_vs_ref_cpu"] == 1.0
    assert "texture" not in summary["tolerance"]  # a JSON without the real images' texture: not judged


def test_texture_is_worse_only_when_farther_from_real_than_the_reference_and_its_noise():
    dice = {"LV": 0.80}
    out = {"real_texture_abs_dx": 0.15, "results": [
        _result("ref: ddim 20", 2.0, dice, texture=0.110), _result("ref: ddim 20, seed 2", 2.0, dice, texture=0.112),
        _result("smoother", 4.0, dice, texture=0.105), _result("within noise", 4.0, dice, texture=0.109),
        _result("sharper", 4.0, dice, texture=0.140), _result("overshoots", 4.0, dice, texture=0.20)]}
    summary = summarise(out)
    assert abs(summary["tolerance"]["texture"] - 0.002) < 1e-9
    out["results"][0]["texture_per_image"] = [0.09, 0.13] * 8  # per-image spread: 2 SE = 2 * 0.0207 / 4 > 0.002
    assert abs(summarise(out)["tolerance"]["texture"] - 2 * np.std([0.09, 0.13] * 8, ddof=1) / 4) < 1e-12
    out["results"][0].pop("texture_per_image")
    worse = {r["name"]: r["worse_on"] for r in summary["rows"]}
    assert worse["smoother"] == ["texture"] and worse["overshoots"] == ["texture"]  # |0.20 - 0.15| > 0.04 + 0.002
    assert worse["within noise"] == [] and worse["sharper"] == []


def test_timing_rounds_interleave_the_settings_one_batch_each(monkeypatch):
    import bench.sampling_quality as sq

    calls = []

    def fake_generate(setting, pipe, cfg, prompts, masks, d_fn):
        calls.append((setting.name, len(prompts)))
        return None, [(1.0, 2.0, len(prompts))]

    monkeypatch.setattr(sq, "generate", fake_generate)
    cfg = type("Cfg", (), {"sample": type("S", (), {"batch_size": 3})()})()
    chosen = [sq.Setting("a"), sq.Setting("b", steps=10)]
    out = sq.timing_rounds(chosen, None, cfg, list("pqrstuv"), np.zeros((7, 2, 4, 4)), None, rounds=2)
    assert calls == [("a", 3), ("b", 3), ("a", 3), ("b", 3)]  # a, b, a, b: never all rounds of one, then the other
    assert out == {"a": [(1.0, 2.0, 3)] * 2, "b": [(1.0, 2.0, 3)] * 2}


def test_texture_stats_closed_form():
    from bench.texture import texture_stats

    flat = np.full((2, 1, 4, 4), 0.5)
    stripes = np.tile(np.array([-1.0, 1.0]), (2, 1, 4, 2))  # columns alternate -1, 1
    assert texture_stats(flat) == {"mean": 0.5, "std": 0.0, "mean_abs_dx": 0.0}
    assert texture_stats(stripes) == {"mean": 0.0, "std": 1.0, "mean_abs_dx": 2.0}
