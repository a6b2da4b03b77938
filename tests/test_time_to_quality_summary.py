"""bench.time_to_quality_summary: when a recipe reaches the reference (strict and within noise), generator spread."""
import pytest

from bench.time_to_quality_summary import FIDS, reach, reference_noise, summarise


def test_reach_and_summary_pick_the_first_checkpoint_good_on_both():
    points = [{"controlnet_step": 1, "train_seconds": 10.0, "mean_dice": 0.5, "fid": 9.0},
              {"controlnet_step": 2, "train_seconds": 20.0, "mean_dice": 0.7, "fid": 6.0},
              {"controlnet_step": 3, "train_seconds": 30.0, "mean_dice": 0.8, "fid": 5.0}]
    assert reach(points, {"mean_dice": 0.6, "fid": 7.0}) == 20.0
    assert reach(points, {"mean_dice": 0.9, "fid": 1.0}) is None
    fast = [{"controlnet_step": 1, "train_seconds": 12.0, "mean_dice": 0.85, "fid": 4.0}]
    summary = summarise({"ldm_steps": 10, "n": 4, "recipes": {"current": {"points": points}, "fast": {"points": fast}}})
    assert summary["rows"]["fast"]["strict"]["speedup_vs_reference"] == 30.0 / 12.0
    assert summary["rows"]["fast"]["strict"]["step_ratio_vs_reference"] == 13 / 11
    assert summary["rows"]["current"]["strict"]["seconds_to_reference_final"] == 30.0
    assert "within_noise" not in summary["rows"]["fast"]  # no second seed of the reference: no noise band


def test_within_noise_uses_the_larger_of_the_seed_difference_and_two_standard_errors():
    stds = {f"{k}_std": 2.0 for k in FIDS}
    final = {"mean_dice": 0.80, "mean_dice_std": 0.10, "fid": 5.0, "fid_segmenter": 0.02, "fid_attributes": 9.0, **stds}
    seed2 = {"mean_dice": 0.79, "fid": 5.5, "fid_segmenter": 0.02, "fid_attributes": 9.0}
    tol = reference_noise(final, seed2, n=100, fid_repeats=16)
    assert tol["mean_dice"] == pytest.approx(0.02)  # 2 * 0.10 / sqrt(100) > |0.80 - 0.79|
    assert tol["fid"] == pytest.approx(1.0) and tol["fid_attributes"] == pytest.approx(1.0)  # 2 * 2 / sqrt(16) > 0.5
    seed2["fid"] = 7.0
    assert reference_noise(final, seed2, n=100, fid_repeats=16)["fid"] == pytest.approx(2.0)  # the seeds differ more
    near = {"controlnet_step": 1, "train_seconds": 5.0, **{k: final[k] for k in ("mean_dice", *FIDS)}}
    near |= {"mean_dice": 0.79, "fid": 5.9}
    assert reach([near], final) is None and reach([near], final, tol=tol) == 5.0
    assert reach([{**near, "mean_dice": 0.77}], final, tol=tol) is None


def test_reach_needs_every_realism_feature_space_the_target_measured():
    target = {"mean_dice": 0.8, "fid": 5.0, "fid_segmenter": 0.02, "fid_attributes": 9.0}
    good = {"controlnet_step": 1, "train_seconds": 10.0, "mean_dice": 0.8, "fid": 5.0, "fid_segmenter": 0.02,
            "fid_attributes": 9.0}
    assert reach([good], target) == 10.0
    for key in ("fid_segmenter", "fid_attributes"):
        assert reach([{**good, key: good[key] * 1.01}], target) is None  # worse in one space: not reached
        assert reach([{k: v for k, v in good.items() if k != key}], target) is None  # unmeasured: not reached
    assert reach([{k: v for k, v in good.items() if k != "fid_segmenter"}], {"mean_dice": 0.8, "fid": 5.0}) == 10.0


def test_generator_spread_is_a_welch_interval_over_generators():
    from scipy import stats

    from bench.time_to_quality_summary import generator_spread

    def final(v):
        return {"points": [{"train_seconds": 1.0, "mean_dice": v, **{k: v for k in FIDS}}]}

    out = {"recipes": {"a0": final(1.0), "a1": final(3.0), "b0": final(4.0), "b1": final(6.0), "b2": final(8.0)}}
    res = generator_spread(out, {"a": ["a0", "a1"], "b": ["b0", "b1", "b2"]})
    assert res["a"]["fid"] == {"mean": 2.0, "std": 2 ** 0.5} and "minus_first" not in res["a"]["fid"]
    b = res["b"]["mean_dice"]
    va, vb = 4.0 / 3, 2.0 / 2  # var/n of b (4, 6, 8) and of a (1, 3)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1)
    assert b["minus_first"] == 4.0
    assert b["hi"] - 4.0 == pytest.approx(stats.t.ppf(0.975, df) * (va + vb) ** 0.5)
    assert b["lo"] == pytest.approx(8.0 - b["hi"])
    # the Welch p-value agrees with the interval: below 0.05 exactly when the interval excludes 0
    assert (b["p"] < 0.05) == (b["lo"] > 0 or b["hi"] < 0)
    assert b["p"] == pytest.approx(2 * stats.t.sf(4.0 / (va + vb) ** 0.5, df))
    # Holm over four equal p-values: each multiplied by 4 (capped at 1)
    assert all(res["b"][k]["p_holm"] == pytest.approx(min(1.0, 4 * b["p"])) for k in ("mean_dice", *FIDS))


def test_generator_spread_at_a_controlnet_step_compares_those_points_with_the_first_groups():
    from bench.time_to_quality_summary import generator_spread, spread_markdown

    def points(early, final):
        return {"points": [{"controlnet_step": s, "train_seconds": float(s), "train_steps": 100 + s, "mean_dice": v,
                            **{k: v for k in FIDS}} for s, v in ((5, early), (10, final))]}

    out = {"recipes": {"a0": points(0.0, 1.0), "a1": points(0.0, 3.0), "b0": points(2.0, 9.0), "b1": points(4.0, 9.0)}}
    res = generator_spread(out, {"a": ["a0", "a1"], "b:5": ["b0", "b1"]})
    assert res["b:5"]["fid"]["mean"] == 3.0 and res["b:5"]["fid"]["minus_first"] == 1.0  # b at step 5 vs a's finals
    assert res["b:5"]["train_steps"] == [105, 105] and res["a"]["train_steps"] == [110, 110]
    assert "| b:5 (2) | 105 | 5; 2.00x less [2.00, 2.00] |" in spread_markdown(res)  # a's 10 s over b's 5 s
    with pytest.raises(KeyError, match="step 7"):
        generator_spread(out, {"a": ["a0"], "b:7": ["b0"]})


def test_seconds_ratio_is_the_ratio_of_means_with_an_interval_over_generators():
    from bench.time_to_quality_summary import seconds_ratio

    r = seconds_ratio([600.0, 700.0, 650.0], [400.0, 500.0])
    assert r["ratio"] == pytest.approx(650.0 / 450.0)
    assert 600.0 / 500.0 <= r["lo"] < r["ratio"] < r["hi"] <= 700.0 / 400.0  # within the extreme resamples
    assert seconds_ratio([3.0, 3.0], [2.0, 2.0]) == {"ratio": 1.5, "lo": 1.5, "hi": 1.5}


def test_paired_spread_is_a_t_interval_on_each_seeds_difference():
    from scipy import stats

    from bench.time_to_quality_summary import generator_spread

    def final(v):
        return {"points": [{"train_seconds": 1.0, "mean_dice": v, **{k: v for k in FIDS}}]}

    # seeds differ a lot, the recipe moves each by +2, +2.5, +1.5: paired the shift is resolved, unpaired it is not
    out = {"recipes": {"a0": final(0.0), "a1": final(10.0), "a2": final(20.0),
                       "b0": final(2.0), "b1": final(12.5), "b2": final(21.5)}}
    groups = {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}
    paired = generator_spread(out, groups, paired=True)["b"]["fid"]
    half = stats.t.ppf(0.975, 2) * 0.5 / 3 ** 0.5  # sd of (2, 2.5, 1.5) is 0.5
    assert paired["minus_first"] == 2.0 and paired["lo"] == pytest.approx(2.0 - half) and paired["lo"] > 0
    assert paired["p"] == pytest.approx(stats.ttest_rel([2, 12.5, 21.5], [0, 10, 20]).pvalue)
    assert generator_spread(out, groups)["b"]["fid"]["lo"] < 0  # Welch: the seeds' spread hides it
    with pytest.raises(KeyError, match="as many generators"):
        generator_spread(out, {"a": ["a0", "a1"], "b": ["b0", "b1", "b2"]}, paired=True)


def test_spread_adds_ef_error_and_prompt_recovery_when_every_point_has_them():
    from bench.time_to_quality_summary import generator_spread, spread_markdown

    def final(v, also=True):
        extra = {"ef_abs_error_median": v / 10, "recovered_health": 1 - v / 10} if also else {}
        return {"points": [{"train_seconds": 1.0, "mean_dice": v, **{k: v for k in FIDS}, **extra}]}

    out = {"recipes": {"a0": final(1.0), "a1": final(3.0), "b0": final(4.0), "b1": final(6.0)}}
    res = generator_spread(out, {"a": ["a0", "a1"], "b": ["b0", "b1"]})
    assert res["b"]["recovered_health"]["minus_first"] == pytest.approx(-0.3)
    p = res["b"]["mean_dice"]["p"]  # six equal p-values (every measure moves alike): Holm multiplies by 6
    assert res["b"]["ef_abs_error_median"]["p_holm"] == pytest.approx(min(1.0, 6 * p))
    assert "recovered_health" in spread_markdown(res)
    out["recipes"]["b1"] = final(6.0, also=False)  # one generator without them: the four measures only
    assert "recovered_health" not in generator_spread(out, {"a": ["a0", "a1"], "b": ["b0", "b1"]})["b"]


def test_pairs_to_band_is_the_fewest_pairs_whose_half_width_fits():
    from scipy import stats

    from bench.time_to_quality_summary import generator_spread, pairs_to_band, spread_markdown

    def half(n, sd):
        return stats.t.ppf(0.975, n - 1) * sd / n ** 0.5

    n = pairs_to_band(10.0, 5.0)
    assert half(n, 10.0) <= 5.0 < half(n - 1, 10.0) and n == 18  # z alone would say (1.96 * 2) ** 2 = 16
    assert pairs_to_band(1.0, 1e-6, limit=50) is None

    def final(v):
        return {"points": [{"train_seconds": 1.0, "mean_dice": v, **{k: v for k in FIDS}}]}

    out = {"recipes": {"a0": final(0.0), "a1": final(10.0), "a2": final(20.0),
                       "b0": final(2.0), "b1": final(12.5), "b2": final(21.5)},
           "summary": {"reference_noise": {"fid": 0.25}}}  # pair differences 2, 2.5, 1.5: sd 0.5
    res = generator_spread(out, {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}, paired=True)
    assert res["b"]["fid"]["pairs_to_noise_band"] == pairs_to_band(0.5, 0.25)
    assert "pairs_to_noise_band" not in res["b"]["mean_dice"]  # no band for it
    assert f"b: fid {pairs_to_band(0.5, 0.25)}" in spread_markdown(res)


def test_non_inferiority_reads_the_worse_end_of_each_interval_against_its_margin():
    from bench.time_to_quality_summary import generator_spread, non_inferior, spread_markdown

    assert non_inferior("mean_dice", -0.01, 0.03, 0.02) and not non_inferior("mean_dice", -0.03, 0.01, 0.02)
    assert non_inferior("fid", -5.0, 1.9, 2.0) and not non_inferior("fid", -5.0, 2.1, 2.0)  # lower is better
    assert non_inferior("recovered_health", -0.05, 0.2, 0.05)

    def final(dice, fid):
        return {"points": [{"train_seconds": 1.0, "mean_dice": dice, **{k: fid for k in FIDS}}]}

    # b is 0.01 Dice lower and 1 FID worse in every pair, give or take 0.002 / 0.2: both resolved tightly
    out = {"recipes": {"a0": final(0.80, 10.0), "a1": final(0.85, 20.0), "a2": final(0.90, 30.0),
                       "b0": final(0.792, 11.2), "b1": final(0.84, 21.0), "b2": final(0.888, 30.8)}}
    groups = {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}
    res = generator_spread(out, groups, paired=True, margins={"mean_dice": 0.05, "fid": 1.0})["b"]
    assert res["mean_dice"]["non_inferior"] and res["mean_dice"]["lo"] < -0.01 < res["mean_dice"]["hi"] < 0
    assert not res["fid"]["non_inferior"] and res["fid"]["hi"] > 1.0  # the mean shift alone reaches the margin
    assert "fid_segmenter" not in res or "non_inferior" not in res["fid_segmenter"]  # no margin, no verdict
    assert "mean_dice yes (margin 0.05), fid not shown (margin 1)" in spread_markdown(
        generator_spread(out, groups, paired=True, margins={"mean_dice": 0.05, "fid": 1.0}))
    with pytest.raises(KeyError, match="no measure 'dice'"):
        generator_spread(out, groups, paired=True, margins={"dice": 0.05})


def test_margins_plot_needs_a_margin_and_draws_one(tmp_path):
    from bench.time_to_quality_summary import generator_spread, plot_margins

    def final(v):
        return {"points": [{"train_seconds": 1.0, "mean_dice": v, **{k: v for k in FIDS}}]}

    out = {"recipes": {"a0": final(0.8), "a1": final(0.9), "b0": final(0.81), "b1": final(0.89)}}
    groups = {"a": ["a0", "a1"], "b": ["b0", "b1"]}
    with pytest.raises(KeyError, match="margin"):
        plot_margins(generator_spread(out, groups, paired=True), tmp_path / "m.png")
    plot_margins(generator_spread(out, groups, paired=True, margins={"mean_dice": 0.1, "fid": 0.1}), tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000
