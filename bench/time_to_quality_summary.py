"""The time-to-quality bench's reading of its measurements (bench.time_to_quality writes them): when a recipe reaches
the reference's final quality (strictly, or within the reference's sampling noise), the spread of several generators
per recipe, the table and the plot."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# realism feature spaces: the health x position classifier, the segmenter encoder, the audit's attribute network
FIDS = ("fid", "fid_segmenter", "fid_attributes")
# measured beside them since session 20: EF-proxy error, and the prompt's attributes recovered by the audit's network
ALSO = ("ef_abs_error_median", "recovered_health", "recovered_sex", "recovered_bmi_category", "recovered_age_group")
HIGHER_IS_BETTER = ("mean_dice", "recovered_health", "recovered_sex", "recovered_bmi_category", "recovered_age_group")


def measures(points: list[dict]) -> list[str]:
    """Mean Dice, the FIDs and those of ALSO that every point measured."""
    return ["mean_dice", *FIDS, *(k for k in ALSO if all(k in p for p in points))]


def reach(points: list[dict], target: dict, key: str = "train_seconds", tol: dict | None = None) -> float | None:
    """`key` (seconds, or steps) of the first checkpoint at least as good as target on mean Dice and on every FID
    of FIDS that both measured, or None. tol: how far worse each may be (the reference's noise; default 0)."""
    tol = tol or {}
    fids = [k for k in FIDS if k in target]
    good = [p[key] for p in points if p["mean_dice"] >= target["mean_dice"] - tol.get("mean_dice", 0.0)
            and all(k in p and p[k] <= target[k] + tol.get(k, 0.0) for k in fids)]
    return min(good) if good else None


def reference_noise(final: dict, seed2: dict, n: int, fid_repeats: int) -> dict:
    """How far the reference's final quality moves by chance: per measure, the larger of its two sample seeds'
    difference and 2 standard errors (mean Dice over n images; an FID's mean over its subject-split repeats)."""
    tol = {"mean_dice": max(abs(final["mean_dice"] - seed2["mean_dice"]), 2 * final["mean_dice_std"] / n ** 0.5)}
    for k in FIDS:
        tol[k] = max(abs(final[k] - seed2[k]), 2 * final[f"{k}_std"] / fid_repeats ** 0.5)
    return tol


def summarise(out: dict, reference: str = "current", reference_final: dict | None = None) -> dict:
    """Per recipe: seconds and training steps (LDM + ControlNet) to the reference recipe's final quality, at least
    as good on every point estimate ("strict") and within the reference's own noise ("within_noise", where the
    reference's final checkpoint was sampled with a second seed); steps do not move with the machine's load, seconds
    do. reference_final: that point from another invocation (another LDM length, same judges) instead of this
    one's reference recipe."""
    for r in out["recipes"].values():
        for p in r["points"]:
            p["train_steps"] = r.get("ldm_steps", out["ldm_steps"]) + p["controlnet_step"]
    seed2 = None
    if reference_final is None:
        if reference not in out["recipes"] or not out["recipes"][reference]["points"]:
            return {}
        reference_final = out["recipes"][reference]["points"][-1]
        seed2 = out["recipes"][reference].get("final_seed2")
    final = reference_final
    tol = None if seed2 is None else reference_noise(final, seed2, out["n"], out.get("fid_repeats", 4))
    rows = {}
    for name, r in out["recipes"].items():
        rows[name] = {}
        for rule, t in (("strict", None), ("within_noise", tol)):
            if rule == "within_noise" and t is None:
                continue
            sec, steps = (reach(r["points"], final, key, t) for key in ("train_seconds", "train_steps"))
            rows[name][rule] = {"seconds_to_reference_final": sec,
                                "speedup_vs_reference": None if sec is None else final["train_seconds"] / sec,
                                "steps_to_reference_final": steps,
                                "step_ratio_vs_reference": None if steps is None else final["train_steps"] / steps}
    return {"reference": reference,
            "reference_final": {k: final[k] for k in ("mean_dice", *FIDS, "train_seconds", "train_steps")
                                if k in final},
            "reference_noise": tol, "rows": rows}


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mean_dice", "mean control Dice LV/MYO/RV (higher is better)"),
              ("fid", "FID, health x position classifier"), ("fid_segmenter", "FID, segmenter encoder"),
              ("fid_attributes", "FID, attribute network (the audit's)")]
    panels = [(k, t) for k, t in panels if any(k in p for r in out["recipes"].values() for p in r["points"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, (name, r) in enumerate(out["recipes"].items()):  # tab20 + markers: up to 20 distinct series
            points = [p for p in r["points"] if key in p]
            ax.plot([p["train_seconds"] for p in points], [p[key] for p in points], "os^v"[i // 5 % 4] + "-",
                    color=plt.cm.tab20(i % 20), label=name)
        ax.set_xlabel("training seconds (LDM + ControlNet to the checkpoint)")
        ax.set_title(title + ("" if key == "mean_dice" else ", subject-disjoint (lower is better)"), fontsize=8)
    axes[0][0].legend(fontsize=7)
    where = f"{out.get('run', '')} {' '.join(out.get('overrides', []))}"
    fig.suptitle(f"quality vs training time, {out['n']} held-out slices, {where}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_margins(spread: dict, path: Path) -> None:
    """generator_spread's differences from the first group (95 % intervals) on every measure held to a margin, in
    units of that margin with the worse direction to the right: non-inferior where the bar ends left of 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(g, k, v) for g, row in spread.items() for k, v in row.items() if isinstance(v, dict) and "margin" in v]
    if not rows:
        raise KeyError("no measure held to a margin (--margins)")
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.4))
    for y, (g, k, v) in enumerate(rows):
        sign = -1.0 if k in HIGHER_IS_BETTER else 1.0  # worse is to the right for every measure
        lo, mid, hi = sorted(sign * v[x] / v["margin"] for x in ("lo", "minus_first", "hi"))
        ax.plot([lo, hi], [y, y], color="tab:green" if v["non_inferior"] else "tab:red", lw=2.5)
        ax.plot([mid], [y], "ko", ms=4)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.axvline(1.0, color="black", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{g} vs first: {k} (margin {v['margin']:g})" for g, k, v in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("difference / margin, worse to the right (non-inferior: the interval ends left of the dashed line)",
                  fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def point_at(points: list[dict], step: str) -> dict:
    """The point at ControlNet step `step` ('' : the last)."""
    if not step:
        return points[-1]
    found = [p for p in points if p["controlnet_step"] == int(step)]
    if not found:
        raise KeyError(f"no point at ControlNet step {step} (have {[p['controlnet_step'] for p in points]})")
    return found[0]


def seconds_ratio(first: list[float], other: list[float], n_boot: int = 4000, seed: int = 0) -> dict:
    """mean(first) / mean(other), how many times less wall-clock `other` took, with a percentile-bootstrap 95 %
    interval that resamples each group's generators."""
    from classify.bootstrap import percentile_interval

    a, b = np.asarray(first, dtype=float), np.asarray(other, dtype=float)
    rng = np.random.default_rng(seed)
    reps = (a[rng.integers(len(a), size=(n_boot, len(a)))].mean(1)
            / b[rng.integers(len(b), size=(n_boot, len(b)))].mean(1))
    lo, hi = percentile_interval(reps)
    return {"ratio": float(a.mean() / b.mean()), "lo": lo, "hi": hi}


def pairs_to_band(sd: float, band: float, limit: int = 1000) -> int | None:
    """The fewest seed pairs whose paired 95 % t half-width, t(n-1) * sd / sqrt(n) with the pair differences' sd,
    is within `band` (e.g. the reference's sampling-noise band: the size of a non-inferiority design at that
    margin); None beyond `limit`."""
    from scipy import stats

    return next((n for n in range(2, limit + 1) if stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) <= band), None)


def non_inferior(key: str, lo: float, hi: float, margin: float) -> bool:
    """Whether a difference's 95 % interval (this recipe minus the first) has its worse end within `margin` of no
    difference: lo >= -margin where higher is better (Dice, attributes recovered), hi <= margin where lower is."""
    return lo >= -margin if key in HIGHER_IS_BETTER else hi <= margin


def generator_spread(out: dict, groups: dict[str, list[str]], paired: bool = False,
                     margins: dict[str, float] | None = None) -> dict:
    """Final points of several generators per recipe (other training seeds, the main job's), or with a group named
    'LABEL:STEP' their points at ControlNet step STEP: per group and measure the mean, standard deviation, training
    seconds and steps, and each group's difference from the first group with a Welch 95 % interval and p-value,
    Holm-adjusted over the group's measures (generators as the unit: the training-seed variance the
    one-generator rows lack); below the first group, the first's mean training seconds over this one's
    (seconds_ratio: the wall-clock speed-up, as loaded as the generators' machine was). paired: every group lists
    the same training seeds in the same order, and each generator is compared with the first group's of its seed
    (a paired t interval on the differences: what the seed shares, the two recipes do not have to resolve), and for
    the measures with a sampling-noise band (summary.reference_noise) the pairs a design would need (pairs_to_band).
    margins: measure -> non-inferiority margin; each compared measure named there gets `non_inferior`."""
    from scipy import stats

    from classify.stats import holm

    finals = {g: [point_at(out["recipes"][name]["points"], g.partition(":")[2]) for name in names]
              for g, names in groups.items()}
    first = next(iter(finals))
    keys = measures([p for points in finals.values() for p in points])
    res = {}
    for g, points in finals.items():
        row = {"generators": groups[g], "train_seconds": [p["train_seconds"] for p in points],
               "train_steps": [p.get("train_steps") for p in points]}
        for key in keys:
            x, y = np.array([p[key] for p in points]), np.array([p[key] for p in finals[first]])
            row[key] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None}
            if g != first and paired:
                if len(x) != len(y):
                    raise KeyError(f"paired groups need as many generators as the first ({g}: {len(x)}, {len(y)})")
                d = x - y
                half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
                p = float(stats.ttest_rel(x, y).pvalue)
                row[key] |= {"minus_first": float(d.mean()), "lo": float(d.mean()) - half,
                             "hi": float(d.mean()) + half, "p": p}
                if key in (band := out.get("summary", {}).get("reference_noise", {})):
                    row[key]["pairs_to_noise_band"] = pairs_to_band(float(d.std(ddof=1)), band[key])
            elif g != first and len(x) > 1 and len(y) > 1:
                va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
                df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
                half = float(stats.t.ppf(0.975, df) * np.sqrt(va + vb))
                diff = float(x.mean() - y.mean())
                p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
                row[key] |= {"minus_first": diff, "lo": diff - half, "hi": diff + half, "p": p}
        for key, margin in (margins or {}).items():
            if key not in keys:
                raise KeyError(f"no measure {key!r} to hold to a margin (have {', '.join(keys)})")
            if "lo" in row[key]:
                row[key] |= {"margin": margin, "non_inferior": non_inferior(key, row[key]["lo"], row[key]["hi"], margin)}
        if g != first:
            row["seconds_ratio"] = seconds_ratio([p["train_seconds"] for p in finals[first]], row["train_seconds"])
        compared = [k for k in keys if "p" in row[k]]
        for key, adjusted in zip(compared, holm([row[k]["p"] for k in compared])):
            row[key]["p_holm"] = float(adjusted)
        res[g] = row
    return res


def spread_markdown(spread: dict) -> str:
    """generator_spread's result as a table: mean ± sd per measure and, below the first group, the difference
    (Welch 95 % interval, Holm-adjusted p over the measures) and the first's training seconds over its own."""
    keys = [k for k in ("mean_dice", *FIDS, *ALSO) if all(k in row for row in spread.values())]
    lines = ["| recipe (generators) | training steps | training s | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 3) + "|"]
    for g, row in spread.items():
        cells = []
        for k in keys:
            v = row[k]
            cell = f"{v['mean']:.4g}" + ("" if v["std"] is None else f" ± {v['std']:.2g}")
            if "lo" in v:
                cell += (f"; {v['minus_first']:+.3g} [{v['lo']:+.3g}, {v['hi']:+.3g}], p {v['p']:.2g}, "
                         f"p_Holm {v['p_holm']:.2g}")
            cells.append(cell)
        steps = "/".join(sorted({str(n) for n in row["train_steps"]}))  # one value unless the group mixes lengths
        seconds = f"{np.mean(row['train_seconds']):.0f}"
        if "seconds_ratio" in row:
            r = row["seconds_ratio"]
            seconds += f"; {r['ratio']:.2f}x less [{r['lo']:.2f}, {r['hi']:.2f}]"
        lines.append(f"| {g} ({len(row['generators'])}) | {steps} | {seconds} | {' | '.join(cells)} |")
    sizes = [f"{g}: " + ", ".join(f"{k} {row[k]['pairs_to_noise_band']}" for k in keys
                                  if "pairs_to_noise_band" in row[k]) for g, row in spread.items()
             if any("pairs_to_noise_band" in row[k] for k in keys)]
    verdicts = [f"{g}: " + ", ".join(f"{k} {'yes' if row[k]['non_inferior'] else 'not shown'} (margin {row[k]['margin']:g})"
                                     for k in keys if "non_inferior" in row[k])
                for g, row in spread.items() if any("non_inferior" in row[k] for k in keys)]
    if verdicts:
        lines += ["", "Non-inferior (the 95 % interval's worse end within the margin): " + "; ".join(verdicts)]
    if sizes:
        lines += ["", "Seed pairs for the paired 95 % half-width to fall within the reference's sampling-noise band "
                      "(at these pairs' spread): " + "; ".join(sizes)]
    return "\n".join(lines)


def markdown(out: dict) -> str:
    """The per-checkpoint table and the summary of an --out, as in BENCHMARKS.md."""
    lines = ["| recipe (LDM steps) | ControlNet step | training s | Dice LV / MYO / RV | mean Dice | median EF err | "
             "FID classifier | FID segmenter (x1000) | FID attributes | texture | recovered health / sex / BMI |",
             "|---" * 11 + "|"]
    for name, r in out["recipes"].items():
        for p in r["points"]:
            num = lambda k, scale=1.0: f"{p[k] * scale:.2f}" if k in p else "—"  # noqa: E731
            label = name if "@" in name else f"{name} ({r.get('ldm_steps', out['ldm_steps'])})"
            lines.append(f"| {label} | {p['controlnet_step']} | "
                         f"{p['train_seconds']:.0f} | {' / '.join(f'{v:.3f}' for v in p['dice'].values())} | "
                         f"{p['mean_dice']:.3f} | {p['ef_abs_error_median']:.3f} | {num('fid')} | "
                         f"{num('fid_segmenter', 1000.0)} | {num('fid_attributes')} | "
                         f"{p.get('texture_abs_dx', float('nan')):.4f} | "
                         f"{' / '.join(num(f'recovered_{k}') for k in ('health', 'sex', 'bmi_category'))} |")
    summary = out.get("summary", {})
    if summary:
        lines.append("")
        for what in ("final", "noise"):
            if summary.get(f"reference_{what}"):
                rounded = {k: round(v, 4) for k, v in summary[f"reference_{what}"].items()}
                lines.append(f"reference {what}: {json.dumps(rounded)}")
        for name, rules in summary["rows"].items():
            said = [f"{rule}: " + ("not reached" if row["steps_to_reference_final"] is None else
                                   f"{row['speedup_vs_reference']:.2f}x by the clock, "
                                   f"{row['step_ratio_vs_reference']:.2f}x by steps") for rule, row in rules.items()]
            lines.append(f"- {name}: {'; '.join(said)}")
    return "\n".join(lines)
