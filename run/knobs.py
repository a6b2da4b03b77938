"""Knob sweep: one phantom difficulty knob (data.phantom.*) at several levels -> each debiasing arm's gain over
real-only, as a curve with intervals.

    nice -n 10 python -m run.knobs --config configs/tiny.yaml --knob preserved_ef --levels 0 0.5 1 \
        --warm-start runs/tiny --ldm-steps 300 --controlnet-steps 150 --out docs/results/knobs/preserved_ef sample.steps=10

Per level, a run folder <runs>/knobs/<knob>-<level> holds that level's cohort (training and test: the knob acts on
both) and the same stages train.py runs, through the same stage functions (run/stages.py):
- vae: ONE VAE for every level, copied from --warm-start (or trained once, at the first level). The VAE sees
  images only (no label, no prompt) and the knobs move intensities and shapes inside the range it was trained on;
  the sweep measures how well the appearance sign survives the generator (`sign` in knobs.json) rather than assume it.
- ldm, controlnet: with --warm-start, continued from that run's last training checkpoints (weights, EMA, optimiser)
  for --ldm-steps / --controlnet-steps more steps on the level's cohort (level 0 too, so every level gets the same
  treatment); without it, trained from scratch with the config's steps.
- plan, experiment: as train.py runs them; the arms are the config's experiment.arms, whatever they are.
Gains: worst-group balanced accuracy of each arm minus real-only, with the 95% interval of the experiment's own
paired hierarchical bootstrap (test subjects, generators, classifier seeds). Writes <out>/knobs.json, knobs.png, report.md, config.yaml.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from classify.comparisons import METRIC_ROWS, bootstrap_arms, gain_entry, predictions_of
from classify.fairness import sensitive_frame
from data.atomic import atomic_write_bytes
from data.cohort import LV, MYO
from data.errors import InputError, OneLineArgumentParser
from data.json_ready import json_ready, read_json_object
from data.slices import SliceSet
from ddpm.trainer import checkpoint_paths
from geometry.descriptors import describe_ed_es
from run.config import RunConfig, load_run_config
from run.loader import to_dict
from run.lock import run_lock
from run.downstream import load_planned
from run.stages import STAGE, prepare
from run.state import RunState

KNOBS = ("preserved_ef", "group_preserved_ef", "attribute_geometry", "sign")
CONTINUED = (("ldm", "ldm_train"), ("controlnet", "controlnet_train"))  # continued from --warm-start


def level_config(config: Path, overrides: list[str], knob: str, level: float) -> RunConfig:
    return load_run_config(config, [*overrides, f"data.phantom.{knob}={level}", f"name={knob}-{level:g}"])


def _continue_from(warm: Path, run_dir: Path, stage: str) -> int:
    """Copy warm's newest `<stage>-train` checkpoint into run_dir (unless run_dir has one to resume); its step."""
    theirs = checkpoint_paths(warm / stage, f"{stage}-train")
    if not theirs:
        raise InputError(warm / stage, f"no {stage}-train-step*.safetensors to continue from")
    if not checkpoint_paths(run_dir / stage, f"{stage}-train"):
        (run_dir / stage).mkdir(parents=True, exist_ok=True)
        shutil.copy2(theirs[-1], run_dir / stage / theirs[-1].name)
    return int(theirs[-1].stem.rsplit("step", 1)[1])


def run_level(cfg: RunConfig, run_dir: Path, vae: Path | None, warm: Path | None, extra: dict[str, int],
              data_only: bool = False) -> dict:
    """The stages of one level; a stage whose output exists is kept (a rerun continues). Seconds per stage."""
    with run_lock(run_dir):  # one writer per run folder, as train.py: levels may run in parallel processes
        return _run_level(cfg, run_dir, vae, warm, extra, data_only)


def _run_level(cfg: RunConfig, run_dir: Path, vae: Path | None, warm: Path | None, extra: dict[str, int],
               data_only: bool) -> dict:
    timings, tic = {}, time.perf_counter()
    data = prepare(cfg, run_dir, True)
    timings["data"] = time.perf_counter() - tic
    pixel_mm = cfg.data.preprocess.crop_mm / cfg.data.preprocess.size
    cohort = {"train": cohort_summary(data.train, pixel_mm), "test": cohort_summary(data.test, pixel_mm)}
    if data_only:
        return {"seconds": timings, "cohort": cohort}
    if vae is not None and not (run_dir / "vae.safetensors").is_file():
        shutil.copy2(vae, run_dir / "vae.safetensors")
    for name in ("vae", "ldm", "controlnet", "plan", "experiment"):
        if (run_dir / STAGE[name].output).is_file():
            continue
        stage_cfg = cfg
        section = dict(CONTINUED).get(name)
        if warm is not None and section is not None:
            steps = _continue_from(warm, run_dir, name) + extra[name]
            stage_cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), steps=steps)})
        tic = time.perf_counter()
        STAGE[name].fn(RunState(stage_cfg, run_dir, data, resume=True))
        timings[name] = time.perf_counter() - tic
        print(f"[knobs] {run_dir.name}: {name} in {timings[name]:.0f} s", flush=True)
    return {"seconds": timings, "cohort": cohort, "gains": arm_gains(cfg, run_dir, data.test),
            "sign": appearance_sign(data.train, run_dir)}


def arm_gains(cfg: RunConfig, run_dir: Path, test: SliceSet) -> dict:
    """Per arm: worst-group balanced accuracy and its gain over real-only, with the 95% interval of the experiment's
    own paired hierarchical bootstrap (test subjects, generators, classifier seeds)."""
    result = read_json_object(run_dir / "experiment" / "experiment.json", "experiment results")
    columns = tuple(cfg.experiment.groups)
    if list(result["test"]["subject_ids"]) != list(test.subject_ids):
        raise InputError(run_dir / "experiment", "experiment.json was scored on another test set than this level's")
    y_true = np.asarray(result["test"]["labels"])
    codes = sensitive_frame(test.attributes, columns).to_numpy().astype(str)
    preds = predictions_of(result["runs"], len(y_true))
    boot = bootstrap_arms(y_true, preds, codes, test.subject_ids, int(cfg.experiment.n_boot), columns)
    worst = METRIC_ROWS["worst_group_balanced_accuracy"]
    out = {}
    for arm in preds:
        out[arm] = {"worst_group_balanced_accuracy": float(boot.point[arm][worst]),
                    "std_over_seeds": result["aggregate"][arm]["worst_group_balanced_accuracy"]["std"]}
        if arm != "real" and "real" in preds:
            gain = gain_entry(boot, arm, "real", worst, 0.05)
            out[arm]["gain_over_real"] = {k: gain[k] for k in ("point", "lo", "hi")} | {
                "interval": interval_side(gain["lo"], gain["hi"])}
    return out


def interval_side(lo: float, hi: float) -> str:
    """Where a gain's interval lies against 0: a description, not a verdict (see the report's header)."""
    return "below 0" if hi < 0 else "above 0" if lo > 0 else "includes 0"


def _myo_contrasts(slices: SliceSet) -> np.ndarray:
    """(N,) myocardium mean / LV blood mean of each slice's ED frame on [0, 1] intensities (NaN without both):
    the appearance sign lives in this ratio."""
    values = np.full(len(slices), np.nan)
    for i, (image, mask) in enumerate(zip(slices.images[:, 0], slices.masks[:, 0])):
        image = (np.asarray(image, dtype=np.float64) + 1.0) / 2.0  # slices are scaled to [-1, 1]
        myo, blood = image[mask == MYO], image[mask == LV]
        if myo.size and blood.size and float(blood.mean()) != 0.0:
            values[i] = float(myo.mean()) / float(blood.mean())
    return values


def _myo_contrast(slices: SliceSet, rows: np.ndarray) -> float:
    values = _myo_contrasts(slices)[rows]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _auroc(labels: np.ndarray, score: np.ndarray) -> float:
    keep = np.isfinite(score)
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(labels[keep], score[keep]))


def cohort_summary(slices: SliceSet, pixel_mm: float) -> dict:
    """What a knob did to the real data: per label, the median EF proxy and LV ED area of the slices, and how well
    each alone tells heart failure from the rest (AUROC): geometry (low EF proxy) vs appearance (the contrast)."""
    hf = (slices.attributes["health"] == "heart_failure").to_numpy()
    rows = [describe_ed_es(mask[0], mask[1], pixel_mm) for mask in slices.masks]
    ef = np.array([r["ef_proxy"] for r in rows], dtype=float)
    area = np.array([r["ed_lv_area_mm2"] for r in rows], dtype=float)
    contrast = _myo_contrasts(slices)
    out = {label: {"n_slices": int(rows_.sum()), "ef_proxy_median": float(np.nanmedian(ef[rows_])),
                   "lv_ed_area_mm2_median": float(np.nanmedian(area[rows_])),
                   "myo_contrast_mean": float(np.nanmean(contrast[rows_]))}
           for label, rows_ in (("heart_failure", hf), ("other", ~hf)) if rows_.any()}
    out["auroc_geometry"] = _auroc(hf, -ef)
    out["auroc_appearance"] = _auroc(hf, contrast)
    return out


def appearance_sign(train: SliceSet, run_dir: Path) -> dict:
    """Myocardium/blood contrast, heart failure minus the rest, in the real training slices and the synthetic ones:
    how much of the knob's appearance sign the generator reproduces."""
    out = {}
    synthetic = load_planned(run_dir)[1]
    for source, slices in (("real", train), ("synthetic", synthetic)):
        if slices is None or len(slices) == 0:
            continue
        hf = (slices.attributes["health"] == "heart_failure").to_numpy()
        out[source] = {"heart_failure": _myo_contrast(slices, hf), "other": _myo_contrast(slices, ~hf),
                       "n_heart_failure": int(hf.sum()), "n_other": int((~hf).sum())}
    return out


def plot(levels: list[float], results: list[dict], knob: str, path: Path) -> None:
    """Left: gain of each arm over real-only vs the knob level (95% intervals); right: worst-group BA per arm."""
    fig = Figure(figsize=(11, 4))
    gain_ax, abs_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    arms = list(dict.fromkeys(arm for r in results for arm in r["gains"]))
    width = 0.04 * (max(levels) - min(levels) or 1.0)
    for i, arm in enumerate(arms):
        shift = (i - (len(arms) - 1) / 2) * width / max(len(arms) - 1, 1)
        rows = [(x + shift, r["gains"][arm]) for x, r in zip(levels, results) if arm in r["gains"]]
        abs_ax.plot([x for x, _ in rows], [g["worst_group_balanced_accuracy"] for _, g in rows], "o-", label=arm)
        rows = [(x, g["gain_over_real"]) for x, g in rows if "gain_over_real" in g]
        if rows:
            x, g = np.array([x for x, _ in rows]), [g for _, g in rows]
            point = np.array([v["point"] for v in g])
            err = np.array([[v["point"] - v["lo"] for v in g], [v["hi"] - v["point"] for v in g]])
            gain_ax.errorbar(x, point, yerr=err, fmt="o-", capsize=3, label=arm)
    gain_ax.axhline(0.0, color="grey", lw=0.8)
    gain_ax.set(xlabel=f"data.phantom.{knob}", ylabel="worst-group BA gain over real-only",
                title="gain over (a) real-only, 95% paired CI")
    abs_ax.set(xlabel=f"data.phantom.{knob}", ylabel="worst-group balanced accuracy", title="per arm (seed mean)")
    for ax in (gain_ax, abs_ax):
        ax.legend(fontsize=8)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(g: dict) -> str:
    gain = g.get("gain_over_real")
    extra = "" if gain is None else f"; {gain['point']:+.3f} [{gain['lo']:+.3f}, {gain['hi']:+.3f}] {gain['interval']}"
    return f"{g['worst_group_balanced_accuracy']:.3f}{extra}"


def _cohort_rows(levels: list[float], results: list[dict]) -> list[str]:
    rows = []
    for level, r in zip(levels, results):
        for split, c in r["cohort"].items():
            hf, other = c.get("heart_failure", {}), c.get("other", {})
            rows.append(f"| {level:g} | {split} | {hf.get('n_slices', 0)} / {other.get('n_slices', 0)} | "
                        f"{hf.get('ef_proxy_median', float('nan')):.2f} / {other.get('ef_proxy_median', float('nan')):.2f} | "
                        f"{hf.get('lv_ed_area_mm2_median', float('nan')):.0f} / "
                        f"{other.get('lv_ed_area_mm2_median', float('nan')):.0f} | "
                        f"{hf.get('myo_contrast_mean', float('nan')):.3f} / {other.get('myo_contrast_mean', float('nan')):.3f} | "
                        f"{c['auroc_geometry']:.3f} | {c['auroc_appearance']:.3f} |")
    return rows


def _gain_section(levels: list[float], results: list[dict]) -> list[str]:
    arms = list(dict.fromkeys(arm for r in results for arm in r["gains"]))
    rows = [f"| {level:g} | " + " | ".join(_fmt(r["gains"][a]) if a in r["gains"] else "-" for a in arms) + " |"
            for level, r in zip(levels, results)]
    sign_rows = []
    for level, r in zip(levels, results):
        cells = [f"{r['sign'][s]['heart_failure'] - r['sign'][s]['other']:+.3f}" if s in r["sign"] else "-"
                 for s in ("real", "synthetic")]
        sign_rows.append(f"| {level:g} | {cells[0]} | {cells[1]} |")
    return [
        "Worst-group balanced accuracy per arm (seed mean); for each arm but real-only, its gain over real-only "
        "[95 % paired hierarchical bootstrap over test subjects, generators and seeds, uncorrected] and where that interval lies. No verdict words: a sweep level has one generator (its variance is not resampled) and the gains are not corrected for the arms x levels compared:", "",
        "| level | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms), *rows, "",
        "![gain per arm vs knob level](knobs.png)", "",
        "Appearance sign (myocardium / LV blood contrast, heart failure minus the rest) in the real training slices "
        "and in the plan's synthetic slices:", "",
        "| level | real | synthetic |", "|---|---|---|", *sign_rows, ""]


def write_report(out: Path, knob: str, levels: list[float], results: list[dict], command: str, wall: float) -> Path:
    seconds = [f"| {level:g} | " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) + " |"
               for level, r in zip(levels, results)]
    gains = _gain_section(levels, results) if all("gains" in r for r in results) else []
    text = "\n".join([
        f"# Knob sweep: data.phantom.{knob}", "",
        f"Command (wall time {wall / 60:.1f} min, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC):", "",
        f"```\n{command}\n```", "", *gains,
        "The real cohort at each level (slices as the pipeline sees them): heart failure / the rest; AUROC of heart "
        "failure from the EF proxy alone (geometry) and from the myocardium/blood contrast alone (appearance):", "",
        "| level | split | slices | EF proxy (median) | LV ED area mm² (median) | myo/blood contrast | AUROC geometry "
        "| AUROC appearance |", "|---|---|---|---|---|---|---|---|", *_cohort_rows(levels, results), "",
        "Seconds per stage:", "", "| level | seconds |", "|---|---|", *seconds, "",
        "Config of every level: `config.yaml` with the knob set to the level; all numbers in `knobs.json`.", ""])
    atomic_write_bytes(out / "report.md", text.encode())
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m run.knobs", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"))
    parser.add_argument("--knob", choices=KNOBS, default="preserved_ef")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--runs", type=Path, default=Path("runs/knobs"), help="one run folder per level in here")
    parser.add_argument("--warm-start", type=Path, default=None,
                        help="a trained run folder: its VAE is shared, its LDM/ControlNet continued per level")
    parser.add_argument("--vae", type=Path, default=None,
                        help="a VAE checkpoint shared by every level (default: --warm-start's, else trained at the first level)")
    parser.add_argument("--ldm-steps", type=int, default=300, help="with --warm-start: LDM steps per level")
    parser.add_argument("--controlnet-steps", type=int, default=150, help="with --warm-start: ControlNet steps per level")
    parser.add_argument("--data-only", action="store_true",
                        help="only make each level's cohort and describe it (no training): what the knob does to the data")
    parser.add_argument("--out", type=Path, default=None, help="default: docs/results/knobs/<knob>")
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied to every level")
    args = parser.parse_args(argv)
    args.out = args.out or Path("docs/results/knobs") / args.knob
    command = "python -m run.knobs " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        tic, results = time.perf_counter(), []
        configs = [level_config(args.config, args.overrides, args.knob, level) for level in args.levels]  # all checked first
        vae = args.vae or (None if args.warm_start is None else args.warm_start / "vae.safetensors")
        if vae is not None and not vae.is_file():
            raise InputError(vae, "no such VAE checkpoint")
        for level, cfg in zip(args.levels, configs):
            run_dir = args.runs / cfg.name
            results.append(run_level(cfg, run_dir, vae, args.warm_start,
                                     {"ldm": args.ldm_steps, "controlnet": args.controlnet_steps}, args.data_only))
            vae = vae or run_dir / "vae.safetensors"  # no warm start: the first level's VAE serves every level
            args.out.mkdir(parents=True, exist_ok=True)  # results so far, after every level
            atomic_write_bytes(args.out / "knobs.json", json.dumps(json_ready(
                {"knob": args.knob, "command": command, "levels": args.levels[:len(results)], "results": results}),
                indent=1).encode())
            if not args.data_only:
                plot(args.levels[:len(results)], results, args.knob, args.out / "knobs.png")
            write_report(args.out, args.knob, args.levels[:len(results)], results, command, time.perf_counter() - tic)
        atomic_write_bytes(args.out / "config.yaml", yaml.safe_dump(to_dict(configs[0]), sort_keys=False).encode())
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
