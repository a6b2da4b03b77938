"""Images/s at equal quality (issue 17 item 1): samplers, steps and the guidance interval on a trained run's
held-out patients, beside diffusers' ControlNet denoising loop (its models on our weights) with its schedulers.

    PYTHONPATH=/path/to/diffusers-site nice -n 10 python -m bench.sampling_quality --run runs/acdc --n 96 \\
        --out bench/sampling-quality-acdc.json

Every setting samples the same n held-out slices (prompts + ED/ES masks of the run's test split, a fixed random
subset) from the same per-sample seeds, and is judged by the same two networks trained here once on the run's real
training slices (evaluation.report's recipe): the segmenter (control Dice per class against the conditioning masks,
median |EF proxy error|) and the realism classifier (subject-disjoint FID, evaluation.held_out.disjoint_fid, with
its real-vs-real bound at the same n). Speed: images per second of the median batch (text encoding, denoising
loop and VAE decode), by wall clock and by the process's CPU time (the ratio to quote on a loaded shared machine);
with --timing-rounds R, of the median of R batches timed apart from the quality pass, the settings interleaved.

The diffusers side runs diffusers' UNet2DConditionModel + ControlNetModel on our converted weights
(bench.convert; the forward is checked equal to ours below) inside the loop of StableDiffusionControlNetPipeline
(scale_model_input, one call on [uncond, cond] when guidance > 1, scheduler.step); prompts are encoded and latents
decoded by our text encoder and VAE on both sides (the pipeline's own CLIP / VAE classes cannot hold our models).
"Default" scheduler: the PNDMScheduler Stable Diffusion 1.x ships with (skip_prk_steps, steps_offset 1).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from bench.diffusers_loop import check_diffusers_equal, diffusers_denoiser, diffusers_generate, diffusers_scheduler
from bench.run_data import run_data
from bench.texture import fine_texture
from data.atomic import atomic_write_bytes
from data.cohort import LABEL_NAMES
from ddpm.sampling import in_sigma_interval
from ddpm.trainer import autocast_context
from evaluation.fidelity import dice, dice_per_structure
from evaluation.held_out import classifier_extractor, disjoint_fid, ef_errors
from evaluation.segmenter import SegmenterConfig, segment, train_segmenter
from run.config import load_run_config
from run.pipeline import Pipeline, load_pipeline

INTERVAL = (0.28, 5.42)  # sigma interval of Kynkaanniemi et al. 2024 for SD-XL (same sigma scale as our schedule)
# ControlNet only above these sigmas; on scaled_linear's 10 trailing steps (sigma 14.6, 8.3, 5.1, 3.3, 2.3, 1.6, 1.2,
# 0.83, 0.57, 0.34) they drop the ControlNet from the last 2 / 4 / 6 steps
CONTROL_FROM = (0.7, 1.4, 3.0)


@dataclass
class Setting:
    name: str
    impl: str = "ours"  # "ours" | "diffusers-pndm" | "diffusers-dpm"
    sampler: str = "ddim"
    steps: int = 20
    guidance: Optional[float] = None  # None: the run's
    interval: Optional[tuple[float, float]] = None
    spacing: Optional[str] = None  # None: the run's
    seed: int = 10_000  # first per-sample seed
    precision: str = "fp32"  # "bf16": the whole call under bf16 autocast (text encoder, loop, VAE decode)
    control_interval: Optional[tuple[float, float]] = None  # sigma range where the ControlNet runs (ours: skipped
    # elsewhere; diffusers: its conditioning scale 0 elsewhere, the net still run, as its control_guidance_end does)


def settings(run_guidance: float, hi_guidance: float) -> list[Setting]:
    """In priority order (a run cut short keeps the most telling rows)."""
    g = hi_guidance if run_guidance == 1.0 else run_guidance  # an interval saves nothing without guidance
    return [Setting("ref: ddim 20"), Setting("ref: ddim 20, seed 2", seed=20_000),
            Setting("dpmpp2m 10 trailing", sampler="dpmpp2m", steps=10, spacing="trailing"),
            Setting("diffusers default (PNDM) 20", impl="diffusers-pndm"),
            Setting("diffusers DPMSolverMultistep 10", impl="diffusers-dpm", steps=10),
            Setting("dpmpp2m 8 trailing", sampler="dpmpp2m", steps=8, spacing="trailing"),
            Setting("diffusers DPMSolverMultistep 8", impl="diffusers-dpm", steps=8),
            Setting("dpmpp2m 10 trailing bf16", sampler="dpmpp2m", steps=10, spacing="trailing", precision="bf16"),
            Setting("dpmpp2m 8 trailing bf16", sampler="dpmpp2m", steps=8, spacing="trailing", precision="bf16"),
            Setting("diffusers DPMSolverMultistep 10 bf16", impl="diffusers-dpm", steps=10, precision="bf16"),
            *[Setting(f"dpmpp2m 10 trailing control>{lo:g}", sampler="dpmpp2m", steps=10, spacing="trailing",
                      control_interval=(lo, math.inf)) for lo in CONTROL_FROM],
            *[Setting(f"diffusers DPMSolverMultistep 10 control>{lo:g}", impl="diffusers-dpm", steps=10,
                      control_interval=(lo, math.inf)) for lo in CONTROL_FROM],
            *[Setting(f"dpmpp2m 10 trailing control>{lo:g} bf16", sampler="dpmpp2m", steps=10, spacing="trailing",
                      control_interval=(lo, math.inf), precision="bf16") for lo in CONTROL_FROM],
            Setting("ddim 10", steps=10),
            Setting("dpmpp2m 12 trailing", sampler="dpmpp2m", steps=12, spacing="trailing"),
            Setting(f"ddim 20 g{g:g}", guidance=g), Setting(f"ddim 20 g{g:g} interval", guidance=g, interval=INTERVAL),
            Setting(f"dpmpp2m 10 trailing g{g:g} interval", sampler="dpmpp2m", steps=10, spacing="trailing",
                    guidance=g, interval=INTERVAL),
            *[Setting(f"dpmpp2m {n} trailing g{g:g} interval{' bf16' if p == 'bf16' else ''}", sampler="dpmpp2m",
                      steps=n, spacing="trailing", guidance=g, interval=INTERVAL, precision=p)
              for n, p in ((8, "fp32"), (10, "bf16"), (8, "bf16"))],
            Setting("diffusers DPMSolverMultistep 8 bf16", impl="diffusers-dpm", steps=8, precision="bf16"),
            Setting("dpmpp2m 10 linspace", sampler="dpmpp2m", steps=10),
            Setting("ddim 10 trailing", steps=10, spacing="trailing"),
            Setting("diffusers DPMSolverMultistep 20", impl="diffusers-dpm", steps=20)]


def quality(images: np.ndarray, masks: np.ndarray, seg, feats_fn, real_feats, real_subjects, fake_subjects,
            pixel_mm: float, fid_repeats: int) -> dict:
    pred = segment(seg, images)
    per_image = {name: [dice(pred[i], masks[i], label) for i in range(len(pred))] for label, name in LABEL_NAMES.items()}
    ef = np.abs(ef_errors(pred, masks, pixel_mm))
    fid = disjoint_fid(real_feats, real_subjects, feats_fn(images), fake_subjects, len(images), fid_repeats)
    texture = fine_texture(images)
    return {"dice": {k: float(np.mean(v)) for k, v in per_image.items()}, "dice_per_image": per_image,
            "ef_abs_error_median": float(np.nanmedian(ef)), "fid": fid["fake_vs_real"]["mean"],
            "fid_std": fid["fake_vs_real"]["std"], "fid_bound": fid["real_vs_real_bound"]["mean"],
            "fid_n_per_side": fid["n_per_side"],
            "texture_abs_dx": float(texture.mean()), "texture_per_image": texture.tolist()}


def noise(seed_1: float, seed_2: float, per_image: Optional[list]) -> float:
    """The reference's noise on a mean: its two seeds' difference or 2 SE of its per-image values, the larger."""
    se2 = 0.0 if per_image is None else 2 * float(np.std(per_image, ddof=1)) / len(per_image) ** 0.5
    return max(abs(seed_1 - seed_2), se2)


def summarise(out: dict) -> dict:
    """Noise of the reference (two seeds; 2 standard errors of its mean Dice, whichever is larger) and, per setting,
    speed ratios and whether it is within that noise of the reference (never worse by more; better is fine)."""
    res = {r["name"]: r for r in out["results"]}
    a, b = res["ref: ddim 20"], res["ref: ddim 20, seed 2"]
    tol = {k: noise(a["dice"][k], b["dice"][k], v) for k, v in a["dice_per_image"].items()}
    tol["EF"] = abs(a["ef_abs_error_median"] - b["ef_abs_error_median"])
    tol["FID"] = abs(a["fid"] - b["fid"])
    real_tex = out.get("real_texture_abs_dx")  # fine texture: the realism judge's features are blind to it
    if real_tex is not None:
        # the seed pair alone (a mean over many pixels) is far too tight
        tol["texture"] = noise(a["texture_abs_dx"], b["texture_abs_dx"], a.get("texture_per_image"))
    default = res.get("diffusers default (PNDM) 20")
    rows = []
    for r in out["results"]:
        worse = [k for k in a["dice"] if r["dice"][k] < a["dice"][k] - tol[k]]
        worse += ["EF"] if r["ef_abs_error_median"] > a["ef_abs_error_median"] + tol["EF"] else []
        worse += ["FID"] if r["fid"] > a["fid"] + tol["FID"] else []
        farther = real_tex is not None and \
            abs(r["texture_abs_dx"] - real_tex) > abs(a["texture_abs_dx"] - real_tex) + tol["texture"]
        worse += ["texture"] if farther else []
        row = {"name": r["name"], "equal_quality": not worse, "worse_on": worse,
               "speed_vs_ref_wall": r["images_per_s"] / a["images_per_s"],
               "speed_vs_ref_cpu": r["images_per_cpu_s"] / a["images_per_cpu_s"]}
        if default is not None:
            row["speed_vs_diffusers_default_wall"] = r["images_per_s"] / default["images_per_s"]
            row["speed_vs_diffusers_default_cpu"] = r["images_per_cpu_s"] / default["images_per_cpu_s"]
        rows.append(row)
    return {"tolerance": tol, "rows": rows}


def markdown(out: dict) -> str:
    summary = {r["name"]: r for r in out["summary"]["rows"]}
    tex = "real_texture_abs_dx" in out
    lines = ["| setting | NFE passes | images/s (wall) | images/CPU-s | vs ref (CPU) | vs diffusers default (CPU) | "
             "Dice LV / MYO / RV | median EF err | FID (bound) | " + (f"texture (real {out['real_texture_abs_dx']:.3f}) | "
                                                                    if tex else "") + "equal quality |",
             "|---" * (11 if tex else 10) + "|"]
    for r in out["results"]:
        s = summary[r["name"]]
        passes = r["steps"] * (2 if r["guidance"] != 1.0 else 1)
        if r["interval"] is not None:
            passes = f"{r['steps']}-{passes} (interval)"
        d = r["dice"]
        lines.append(f"| {r['name']} | {passes} | {r['images_per_s']:.2f} | {r['images_per_cpu_s']:.2f} | "
                     f"{s['speed_vs_ref_cpu']:.2f}x | {s.get('speed_vs_diffusers_default_cpu', float('nan')):.2f}x | "
                     f"{d['LV']:.3f} / {d['MYO']:.3f} / {d['RV']:.3f} | {r['ef_abs_error_median']:.3f} | "
                     f"{r['fid']:.1f} ({r['fid_bound']:.1f}) | " + (f"{r['texture_abs_dx']:.3f} | " if tex else "") +
                     f"{'yes' if s['equal_quality'] else 'no: ' + ', '.join(s['worse_on'])} |")
    tol = out["summary"]["tolerance"]
    lines.append("\nnoise of the reference (tolerance): " + ", ".join(f"{k} {v:.3f}" for k, v in tol.items()))
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tex = "real_texture_abs_dx" in out
    fig, axes = plt.subplots(1, 3 if tex else 2, figsize=(16 if tex else 11, 4.2))
    ref = next(r for r in out["results"] if r["name"] == "ref: ddim 20")
    tol = out["summary"]["tolerance"]
    mean_dice = lambda r: float(np.mean(list(r["dice"].values())))  # noqa: E731
    panels = [("mean Dice LV/MYO/RV (higher is better)", mean_dice, float(np.mean([tol[k] for k in ref["dice"]]))),
              ("FID, subject-disjoint (lower is better)", lambda r: r["fid"], tol["FID"])]
    if tex:
        panels.append((f"fine texture, mean |dx| (real {out['real_texture_abs_dx']:.4f}: closer is better)",
                       lambda r: r["texture_abs_dx"], tol["texture"]))
    for ax, (label, value, band) in zip(axes, panels):
        ax.axhspan(value(ref) - band, value(ref) + band, color="0.9", label="reference +- its noise")
        for r in out["results"]:
            color = "tab:orange" if r["impl"] != "ours" else ("tab:green" if r["sampler"] == "dpmpp2m" else "tab:blue")
            ax.scatter(r["images_per_cpu_s"], value(r), color=color, s=18)
            ax.annotate(r["name"], (r["images_per_cpu_s"], value(r)), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("images per CPU-second (log)")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"sampling quality vs speed, {out['n']} held-out slices of {out['run']} "
                 "(blue: ours DDIM, green: ours DPM-Solver++(2M), orange: diffusers loop)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def generate(setting: Setting, pipe: Pipeline, cfg, prompts, masks, d_fn) -> tuple[np.ndarray, list]:
    """One setting's images (n, 2, S, S) and its batches' (wall s, CPU s, images)."""
    s = cfg.sample
    g = s.guidance if setting.guidance is None else setting.guidance
    images, batches = [], []
    scheduler = diffusers_scheduler(cfg, setting.impl) if setting.impl != "ours" else None
    for start in range(0, len(prompts), s.batch_size):
        idx = slice(start, start + s.batch_size)
        seeds = [setting.seed + j for j in range(start, min(start + s.batch_size, len(prompts)))]
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast_context(setting.precision, pipe.device):
            images.append(_generate_batch(setting, pipe, s, g, scheduler, d_fn, prompts[idx], masks[idx], seeds))
        batches.append((time.perf_counter() - t0, time.process_time() - c0, len(seeds)))
    return np.concatenate(images), batches


def timing_rounds(chosen: list[Setting], pipe: Pipeline, cfg, prompts, masks, d_fn, rounds: int) -> dict[str, list]:
    """Speed apart from the quality pass: each round times one batch of every setting, the settings interleaved, so a
    change in a shared machine's load falls on all of them alike. name -> [(wall s, CPU s, images)] per round."""
    bs = cfg.sample.batch_size
    out: dict[str, list] = {x.name: [] for x in chosen}
    for _ in range(rounds):
        for setting in chosen:
            out[setting.name] += generate(setting, pipe, cfg, prompts[:bs], masks[:bs], d_fn)[1]
    return out


def _generate_batch(setting: Setting, pipe: Pipeline, s, g: float, scheduler, d_fn, prompts, masks, seeds) -> np.ndarray:
    if scheduler is None:
        return pipe.generate(prompts, masks, seed=seeds, sampler=setting.sampler, steps=setting.steps, guidance=g,
                             control_scale=s.control_scale, spacing=setting.spacing or s.spacing,
                             steps_offset=s.steps_offset, guidance_interval=setting.interval,
                             control_interval=setting.control_interval)
    keep = None if setting.control_interval is None else \
        (lambda t: in_sigma_interval(pipe.schedule, int(t), setting.control_interval))
    return diffusers_generate(pipe, d_fn, scheduler, prompts, masks, seeds, setting.steps, g, s.control_scale, keep)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a trained run folder (read only)")
    p.add_argument("--report", type=Path, help="only re-summarise this JSON: print the table, write --plot")
    p.add_argument("--plot", type=Path, help="quality vs images/s figure (PNG)")
    p.add_argument("--n", type=int, default=96, help="held-out slices sampled per setting")
    p.add_argument("--guidance-high", type=float, default=4.0, help="guidance for the interval rows when the run's is 1")
    p.add_argument("--only", nargs="*", help="names of settings to run (default all, in priority order)")
    p.add_argument("--fid-repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--segmenter-steps", type=int, help="default: the run's evaluation.segmenter_steps (smoke runs: fewer)")
    p.add_argument("--classifier-epochs", type=int, help="default: the run's evaluation.attribute_epochs")
    p.add_argument("--images", type=Path, required=False,
                   help="folder caching each setting's images + timings (resumable; never commit: derived from ACDC)")
    p.add_argument("--generate-only", action="store_true", help="sample the settings into --images, judge nothing")
    p.add_argument("--judge-follow", action="store_true",
                   help="sample nothing: train the judges, then judge each setting as its images appear in --images "
                        "(beside a --generate-only process), rewriting --out after each")
    p.add_argument("--timing-rounds", type=int, default=0,
                   help="after sampling, time one batch per setting this many times, settings interleaved; speeds are "
                        "then the median over rounds (written to --images/timing-n<N>.json)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.report is not None:
        out = json.loads(args.report.read_text())
        out["summary"] = summarise(out)
        print(markdown(out))
        if args.plot:
            plot(out, args.plot)
        return 0
    if args.run is None or args.images is None or (args.out is None and not args.generate_only):
        p.error("--run, --images and --out are required (or --report)")
    torch.set_num_threads(args.threads)
    cfg = load_run_config(str(args.run / "config.yaml"))
    with tempfile.TemporaryDirectory() as scratch:
        data = run_data(args.run, cfg, Path(scratch))
    test, s = data.test, cfg.sample
    rows = np.sort(np.random.default_rng(0).choice(len(test), min(args.n, len(test)), replace=False))
    prompts, masks = [test.prompts[i] for i in rows], test.masks[rows]
    fake_subjects = [test.subject_ids[i] for i in rows]
    pixel_mm = cfg.data.preprocess.crop_mm / cfg.data.preprocess.size
    pipe = load_pipeline(args.run / "vae.safetensors", args.run / "ldm.safetensors", args.run / "controlnet.safetensors")
    chosen = [x for x in settings(s.guidance, args.guidance_high) if not args.only or x.name in args.only]
    args.images.mkdir(parents=True, exist_ok=True)
    cached = lambda x: args.images / (x.name.replace(" ", "_").replace(":", "").replace(",", "") + f"-n{len(rows)}.npz")  # noqa: E731

    d_fn, equal, loads = None, None, [Path("/proc/loadavg").read_text().split()[:3]]
    for setting in [] if args.judge_follow else chosen:
        if cached(setting).is_file():
            continue
        if setting.impl != "ours" and d_fn is None:
            d_fn = diffusers_denoiser(pipe)
            equal = check_diffusers_equal(pipe, d_fn, masks)
        images, batches = generate(setting, pipe, cfg, prompts, masks, d_fn)
        loads.append(Path("/proc/loadavg").read_text().split()[:3])
        tmp = cached(setting).with_suffix(".tmp")
        with open(tmp, "wb") as f:  # renamed when complete: a --judge-follow process never reads half a file
            np.savez(f, images=images, batches=np.array(batches), load=np.array(loads[-1], dtype=float),
                     equal=np.array(np.nan if equal is None else equal))
        tmp.replace(cached(setting))
        print(f"{setting.name}: {len(images)} images, median batch {np.median([b[0] for b in batches]):.1f} s wall / "
              f"{np.median([b[1] for b in batches]):.1f} s CPU, load {loads[-1]}", flush=True)
    timing_path = args.images / f"timing-n{len(rows)}.json"
    if args.timing_rounds > 0 and not args.judge_follow:
        if d_fn is None and any(x.impl != "ours" for x in chosen):
            d_fn = diffusers_denoiser(pipe)
        rounds = timing_rounds(chosen, pipe, cfg, prompts, masks, d_fn, args.timing_rounds)
        atomic_write_bytes(timing_path, json.dumps({"rounds": rounds, "load": Path("/proc/loadavg").read_text().split()[:3]}).encode())
    timed = json.loads(timing_path.read_text())["rounds"] if timing_path.is_file() else {}
    if args.generate_only:
        return 0

    tic = time.perf_counter()
    ev = cfg.evaluation
    ev = replace(ev, segmenter_steps=args.segmenter_steps or ev.segmenter_steps,
                 attribute_epochs=args.classifier_epochs or ev.attribute_epochs)
    seg = train_segmenter(data.train.images, data.train.masks, SegmenterConfig(base=ev.segmenter_base),
                          steps=ev.segmenter_steps, seed=ev.seed, batch_size=ev.segmenter_batch_size)
    extractor = classifier_extractor(data.train, ev.attribute_epochs, ev.seed, progress=False)
    real_feats = extractor(test.images, "real_test features")
    seg_real = segment(seg, test.images)
    segmenter_real_dice = dice_per_structure(seg_real, test.masks)
    judges_s = time.perf_counter() - tic
    meta = {"run": str(args.run), "n": len(rows), "held_out_rows": rows.tolist(), "batch_size": s.batch_size,
            "threads": args.threads, "control_scale": s.control_scale, "run_guidance": s.guidance,
            "run_spacing": s.spacing, "interval_sigma": INTERVAL, "segmenter_steps": ev.segmenter_steps,
            "classifier_epochs": ev.attribute_epochs, "segmenter_dice_on_real_test": segmenter_real_dice,
            "real_texture_abs_dx": float(fine_texture(test.images[rows]).mean())}
    results = []
    for setting in chosen:
        while args.judge_follow and not cached(setting).is_file():
            time.sleep(10)
        if not cached(setting).is_file():
            continue
        saved = np.load(cached(setting))
        batches = saved["batches"].tolist()
        speed_from = timed.get(setting.name, batches)  # the interleaved rounds when there are some
        wall = float(np.median([sec / k for sec, _, k in speed_from]))
        cpu = float(np.median([sec / k for _, sec, k in speed_from]))
        q = quality(saved["images"], masks, seg, extractor, real_feats, test.subject_ids, fake_subjects,
                    pixel_mm, args.fid_repeats)
        equal = None if np.isnan(saved["equal"]) else float(saved["equal"])
        results.append({**asdict(setting), "guidance": s.guidance if setting.guidance is None else setting.guidance,
                        "spacing": setting.spacing or s.spacing, "images_per_s": 1.0 / wall,
                        "images_per_cpu_s": 1.0 / cpu, "batch_wall_cpu_n": batches,
                        "speed_from": "interleaved rounds" if setting.name in timed else "quality pass",
                        "round_wall_cpu_n": timed.get(setting.name),
                        "loadavg_after": saved["load"].tolist(), **q})
        if equal is not None:
            results[-1]["diffusers_vs_ours_eps_max_abs"] = equal
        per_image = ("dice_per_image", "texture_per_image", "batch_wall_cpu_n")
        print(json.dumps({k: v for k, v in results[-1].items() if k not in per_image}), flush=True)
        write(args, {**meta, "judges_seconds": judges_s, "loadavg_now": Path("/proc/loadavg").read_text().split()[:3]},
              results)
    return 0


def write(args, meta: dict, results: list) -> None:
    """--out (atomic) with the results so far; the summary and --plot once both reference rows are in."""
    out = {**meta, "results": results}
    if {"ref: ddim 20", "ref: ddim 20, seed 2"} <= {r["name"] for r in results}:
        out["summary"] = summarise(out)
        print(markdown(out), flush=True)
        if args.plot:
            plot(out, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
