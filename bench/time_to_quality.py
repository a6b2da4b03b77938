"""Time to quality for training recipes (issue 17 item 2): control Dice and FID on held-out data against the
wall-clock seconds of LDM + ControlNet training, for recipes that differ only in config overrides.

    nice -n 10 env OMP_NUM_THREADS=1 python -m bench.time_to_quality --run runs/tiny --work /tmp/ttq \\
        --recipes current min_snr --ldm-steps 300 --controlnet-steps 300 --every 100 --n 48 \\
        --out bench/time-to-quality-tiny.json --plot bench/time-to-quality-tiny.png

Every recipe reuses the run's VAE (its latents are the same for all), then trains the LDM for --ldm-steps and a
ControlNet on that LDM's final EMA weights for --controlnet-steps (the run's own train settings otherwise), keeping a
ControlNet checkpoint every --every steps. Each checkpoint (EMA weights) samples the same n held-out slices (prompts
+ masks, same per-sample seeds, the run's sampler settings) and is judged by the same two networks, trained once on
the run's real training slices (bench.sampling_quality.quality: control Dice per class by the evaluation's
segmenter, subject-disjoint FID on the realism classifier's features). Its time is the LDM's training seconds plus
the ControlNet's up to that checkpoint (the trainer's own clock: steps only, no sampling or set-up); the summary
gives seconds and training steps to the reference recipe's final quality (seconds move with a shared machine's
load, steps do not). A recipe may train its own LDM length (`v_ztsnr@600`: 600 LDM steps; a plain name trains
--ldm-steps), so a shorter recipe and the reference are measured in one invocation, on one machine at one time.
A recipe that differs from one already trained in --work only after the LDM (`cn_lr4e-4`: the ControlNet's lr)
reuses that recipe's LDM and counts its seconds: the recipes of one seed then share one LDM (a paired comparison).

Realism is judged in three feature spaces, each a subject-disjoint FID on the same samples: the health x position
classifier's ("fid"), the evaluation's domain segmenter encoder ("fid_segmenter", the main job's evaluation FID) and
the audit's attribute network ("fid_attributes", the main job's FID on its training synthetics); a recipe reaches the
reference's quality when its mean control Dice and all three FIDs are at least as good. Beside them (not in that
rule): the median EF-proxy error and the prompt's attributes recovered from the samples by the audit's attribute
network (`recovered_health`, ...; its accuracy on the same real slices is stored as the ceiling). `section.key=value`
overrides apply to the run's config (e.g. the sampler that judges every checkpoint); --resume reuses a recipe's
checkpoints already in --work (a finished stage is not retrained; its seconds are read from its metrics log);
--finished NAME=RUN judges the final generator of a finished run (e.g. a main job) with the same judges and sampler,
so a recipe's generators trained elsewhere or from other seeds sit in the same table. `RECIPE-seedK` trains a recipe
from another training seed. Training and sampling run on the run's `device` (overrides: `device=cuda`), sampling with
its `sample.precision`; all recipes train before the judges (CPU) do, so a GPU starts at once; --merge joins the
--out files of parallel invocations (bench/time_to_quality_gpu.sh: one process per generator on one GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.run_data import run_data
from bench.sampling_quality import quality
from bench.time_to_quality_recipes import (RECIPES, controlnet_pipelines, parse_finished, parse_recipe,
                                          train_recipe, trained_seconds)
from bench.time_to_quality_summary import (FIDS, generator_spread, markdown, plot, plot_margins, spread_markdown,
                                           summarise)
from data.atomic import atomic_write_bytes
from data.errors import InputError, OneLineArgumentParser
from ddpm.distributed import resolve_device
from ddpm.trainer import autocast_context
from evaluation.attribute_net import train_attribute_net
from evaluation.attributes import attribute_labels
from evaluation.features import segmenter_extractor
from evaluation.fidelity import dice_per_structure
from evaluation.held_out import classifier_extractor, disjoint_fid
from evaluation.segmenter import SegmenterConfig, segment, train_segmenter
from evaluation.training_set import RECOVERED, recovery
from run.config import RunConfig, load_run_config
from run.pipeline import Pipeline, generation_kwargs, load_pipeline
from run.prepare_data import PreparedData


def judges(data: PreparedData, cfg, segmenter_steps: int, classifier_epochs: int) -> tuple:
    """Trained once on the real training slices: the segmenter (control Dice), the three realism feature spaces
    of FIDS and the audit's attribute network (prompt adherence). Returns (segmenter, {fid key: (features fn,
    held-out real features)}, attribute network, segmenter Dice on real held-out)."""
    ev = cfg.evaluation
    seg = train_segmenter(data.train.images, data.train.masks, SegmenterConfig(base=ev.segmenter_base),
                          steps=segmenter_steps, seed=ev.seed, batch_size=ev.segmenter_batch_size)
    classifier = classifier_extractor(data.train, classifier_epochs, ev.seed, progress=False)
    if classifier is None:
        raise InputError("data", "the realism classifier needs two or more health x slice-position classes")
    attributes = train_attribute_net(data.train.images, attribute_labels(data.train.attributes, use_numbers=True),
                                     RECOVERED, ev.training_set.epochs, seed=ev.seed)
    feature_fns = dict(zip(FIDS, (classifier, segmenter_extractor(seg, len(data.train), progress=False),
                                  lambda x, desc="": attributes.features(x))))
    real_dice = dice_per_structure(segment(seg, data.test.images), data.test.masks)
    realism = {k: (fn, fn(data.test.images, "held-out features")) for k, fn in feature_fns.items()}
    return seg, realism, attributes, real_dice


def prompt_recovery(net, images: np.ndarray, told) -> dict[str, float]:
    """{recovered_<attribute>: accuracy} of the attribute network on images against the attributes their prompts
    told (told: attribute_labels(..., use_numbers=False) of the same rows)."""
    overall = recovery(net, images, told, ["all"] * len(images))["overall"]
    return {f"recovered_{k}": v["accuracy"] for k, v in overall.items() if "accuracy" in v}


JUDGED_ALIKE = ("run", "n", "threads", "overrides", "segmenter_dice_on_real_test")  # same judges, data and sampler
TRAINED_ALIKE = ("ldm_steps", "controlnet_steps", "every", "fid_repeats")  # and the same recipes' lengths


def require_same(before: dict, now: dict, keys: tuple[str, ...], where: str | Path, what: str) -> None:
    """One line naming what must match when an earlier --out's measurements are compared with or joined to now's."""
    if any(before.get(k) != now[k] for k in keys):
        raise InputError(where, f"was measured with {what} ({', '.join(keys)} must match)")


def reference_point(path: Path, now: dict, reference: str = "current") -> dict:
    """The final point of `reference` in an earlier --out measured with the same judges (run, n, threads, the
    segmenter's Dice on the real held-out slices), its training steps counted with that file's LDM length."""
    before = json.loads(path.read_text())
    require_same(before, now, JUDGED_ALIKE, path, "other judges, data or sampler")
    points = before.get("recipes", {}).get(reference, {}).get("points")
    if not points:
        raise InputError(path, f"holds no measured '{reference}' recipe")
    ldm_steps = before["recipes"][reference].get("ldm_steps", before["ldm_steps"])
    return {**points[-1], "train_steps": ldm_steps + points[-1]["controlnet_step"]}


def kept_recipes(before: dict, now: dict, where: str | Path = "--add") -> dict:
    """The recipes of an earlier --out, refused unless measured with the same settings (judges retrain the same)."""
    require_same(before, now, JUDGED_ALIKE + TRAINED_ALIKE, where, "other settings or judges")
    return before["recipes"]


def merge(parts: list[Path]) -> dict:
    """Several --out files of one design as one (recipes measured by parallel invocations, e.g. one per process on a
    shared GPU); refused unless all were measured with the same settings and identically trained judges."""
    out = json.loads(parts[0].read_text())
    for part in parts[1:]:
        kept = kept_recipes(json.loads(part.read_text()), out, part)
        twice = sorted(set(kept) & set(out["recipes"]))
        if twice:
            raise InputError(part, f"measures {', '.join(twice)} again (each recipe once across the parts)")
        out["recipes"].update(kept)
    out["merged_from"] = [str(p) for p in parts]
    out["summary"] = summarise(out)
    return out


def parse_margins(specs: list[str]) -> dict[str, float]:
    """['mean_dice=0.022', 'fid=6.4'] -> {'mean_dice': 0.022, 'fid': 6.4}; ValueError on anything else."""
    margins = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not key or not eq:
            raise ValueError(spec)
        margins[key] = float(value)
    return margins


def main(argv: list[str] | None = None) -> int:
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a run with a trained VAE (read only)")
    p.add_argument("--work", type=Path, help="folder for each recipe's checkpoints (large; not committed)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES),
                   help=f"NAME[@LDM_STEPS][-seedK] (its own LDM length; trained from seed K), NAME one of "
                        f"{', '.join(RECIPES)}")
    p.add_argument("--ldm-steps", type=int, default=300, help="LDM steps of a recipe named without @")
    p.add_argument("--controlnet-steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100, help="ControlNet checkpoint interval (steps)")
    p.add_argument("--n", type=int, default=48, help="held-out slices sampled per checkpoint")
    p.add_argument("--segmenter-steps", type=int, help="default: the run's evaluation.segmenter_steps")
    p.add_argument("--classifier-epochs", type=int, help="default: the run's evaluation.attribute_epochs")
    p.add_argument("--fid-repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--report", type=Path, help="only print this --out's table and summary (and write --plot)")
    p.add_argument("--groups", nargs="+", default=[], metavar="GROUP[:STEP]=NAME,NAME",
                   help="with --report: several generators' final points per recipe (training seeds, --finished "
                        "runs), or their points at ControlNet step STEP, compared with the first group's (Welch 95 %% "
                        "intervals)")
    p.add_argument("--paired", action="store_true",
                   help="with --groups listing the same training seeds in the same order: paired t intervals")
    p.add_argument("--margins", nargs="+", default=[], metavar="MEASURE=MARGIN",
                   help="with --groups: non-inferiority margins, e.g. mean_dice=0.022 fid=6.4 (each group's interval "
                        "against the first group's, its worse end within the margin)")
    p.add_argument("--margins-plot", type=Path, help="with --margins: each interval in units of its margin")
    p.add_argument("--merge", nargs="+", type=Path, default=[], metavar="PART",
                   help="write the --out files PART... (same settings and judges, e.g. one per parallel process) as "
                        "one --out (and --plot), then print it")
    p.add_argument("--reference", type=Path,
                   help="an earlier --out whose 'current' final point is the quality to reach (e.g. a shorter LDM here)")
    p.add_argument("--add", action="store_true",
                   help="keep the recipes already in --out (same run, steps and n) and train only the others")
    p.add_argument("--resume", action="store_true",
                   help="reuse (or continue) each recipe's checkpoints already in --work instead of training anew")
    p.add_argument("--finished", nargs="+", default=[], metavar="NAME=RUN",
                   help="also judge finished runs' final generators (e.g. main jobs of two presets) with the same "
                        "judges and sampler; their time is their LDM + ControlNet trainer clocks")
    p.add_argument("overrides", nargs="*", help="section.key=value on the run's config, e.g. sample.steps=10")
    args = p.parse_args(argv)
    try:
        margins = parse_margins(args.margins)
    except ValueError:
        p.error(f"--margins: expected MEASURE=NUMBER ..., got {' '.join(args.margins)}")
    if args.report is not None:
        try:
            out = json.loads(args.report.read_text())
            print(markdown(out))
            if args.groups:
                groups = dict((g, names.split(",")) for g, _, names in (spec.partition("=") for spec in args.groups))
                spread = generator_spread(out, groups, args.paired, margins)
                print("\n" + spread_markdown(spread))
                if args.margins_plot:
                    plot_margins(spread, args.margins_plot)
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"error: {args.report}: expected a bench.time_to_quality --out JSON ({type(err).__name__}: {err})",
                  file=sys.stderr)
            return 2
        if args.plot:
            plot(out, args.plot)
        return 0
    if args.merge:
        if args.out is None:
            p.error("--merge needs --out")
        try:
            out = merge(args.merge)
        except (OSError, ValueError, KeyError, TypeError, InputError) as err:
            print(f"error: {err}" if isinstance(err, InputError) else
                  f"error: --merge: expected bench.time_to_quality --out JSONs ({type(err).__name__}: {err})",
                  file=sys.stderr)
            return 2
        atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
        if args.plot:
            plot(out, args.plot)
        print(markdown(out))
        return 0
    if args.run is None or args.work is None or args.out is None:
        p.error("--run, --work and --out are required (or --report, --merge)")
    if min(args.ldm_steps, args.controlnet_steps, args.every, args.n) < 1 or args.controlnet_steps % args.every:
        p.error(f"expected positive steps and --controlnet-steps a multiple of --every, got {args.controlnet_steps} "
                f"and {args.every}")
    try:
        args.recipes = {spec: parse_recipe(spec, args.ldm_steps) for spec in args.recipes}
        args.finished = dict(parse_finished(spec) for spec in args.finished)
        return measure(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def measure(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    base = load_run_config(args.run / "config.yaml", args.overrides)
    with tempfile.TemporaryDirectory() as scratch:
        data = run_data(args.run, base, Path(scratch))
    before = json.loads(args.out.read_text()) if args.add and args.out.is_file() else {"recipes": {}}
    # every recipe trains before the judges do, so a GPU starts at once (the judges train on the CPU)
    trained = {name: train_recipe(args.run, [*args.overrides, *overrides], data, args.work / name, ldm_steps,
                                  args.controlnet_steps, args.every, args.resume)
               for name, (overrides, ldm_steps) in args.recipes.items() if name not in before["recipes"]}
    ev = base.evaluation
    tic = time.perf_counter()
    seg, realism, attributes, real_dice = judges(data, base, args.segmenter_steps or ev.segmenter_steps,
                                                 args.classifier_epochs or ev.attribute_epochs)
    rows = np.sort(np.random.default_rng(0).choice(len(data.test), min(args.n, len(data.test)), replace=False))
    prompts, masks = [data.test.prompts[i] for i in rows], data.test.masks[rows]
    told = attribute_labels(data.test.attributes.iloc[rows].reset_index(drop=True), use_numbers=False)
    fake_subjects = [data.test.subject_ids[i] for i in rows]
    pixel_mm = base.data.preprocess.crop_mm / base.data.preprocess.size
    out = {"run": str(args.run), "overrides": args.overrides, "n": len(rows), "fid_repeats": args.fid_repeats,
           "ldm_steps": args.ldm_steps, "controlnet_steps": args.controlnet_steps,
           "every": args.every, "threads": args.threads, "judges_seconds": time.perf_counter() - tic,
           "segmenter_dice_on_real_test": real_dice,
           "attributes_recovered_on_real_test": prompt_recovery(attributes, data.test.images[rows], told),
           "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
           "recipes": {}}
    target = None if args.reference is None else reference_point(args.reference, out)
    if target is not None:
        out["reference_from"] = str(args.reference)

    def judge(pipe: Pipeline, cfg: RunConfig, seed: int) -> dict:
        """Samples the n held-out slices (per-sample seeds seed + i) and scores them with every judge."""
        s = cfg.sample
        with autocast_context(s.precision, pipe.device):
            images = np.concatenate([pipe.generate(prompts[i:i + s.batch_size], masks[i:i + s.batch_size],
                                                   seed=seed + i, **generation_kwargs(s))
                                     for i in range(0, len(prompts), s.batch_size)])
        q = quality(images, masks, seg, *realism["fid"], data.test.subject_ids, fake_subjects, pixel_mm,
                    args.fid_repeats)
        per_image = np.mean(list(q.pop("dice_per_image").values()), axis=0)
        q.pop("texture_per_image")
        for key in FIDS[1:]:  # quality() scored the first
            feats_fn, real_feats = realism[key]
            fid = disjoint_fid(real_feats, data.test.subject_ids, feats_fn(images), fake_subjects, len(images),
                               args.fid_repeats)
            q |= {key: fid["fake_vs_real"]["mean"], f"{key}_std": fid["fake_vs_real"]["std"],
                  f"{key}_bound": fid["real_vs_real_bound"]["mean"]}
        return {"mean_dice": float(per_image.mean()), "mean_dice_std": float(per_image.std(ddof=1)), **q,
                **prompt_recovery(attributes, images, told)}

    if before["recipes"]:
        out["recipes"].update(kept_recipes(before, out))

    def save(name: str, entry: dict) -> None:
        """Adds one measured generator to --out (written after each, so a cut-short run keeps what it measured)."""
        out["recipes"][name] = {**entry, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
        out["summary"] = summarise(out, reference_final=target)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
        if args.plot:
            plot(out, args.plot)

    for name, (cfg, ldm_path, ldm_seconds) in trained.items():
        overrides, ldm_steps = args.recipes[name]
        cn_seconds = trained_seconds(args.work / name / "controlnet" / "controlnet-train-metrics.jsonl")
        points = []
        for step, pipe in controlnet_pipelines(cfg, args.work / name, ldm_path):
            points.append({"controlnet_step": step, "train_seconds": ldm_seconds + cn_seconds[step],
                           **judge(pipe, cfg, 10_000)})
            print(json.dumps({"recipe": name, **points[-1]}), flush=True)
        extra = {}
        if name == "current" and target is None:  # the reference's noise: its final checkpoint, other sample seeds
            extra["final_seed2"] = judge(pipe, cfg, 20_000)
        save(name, {"overrides": overrides, "ldm_steps": ldm_steps, "ldm_seconds": ldm_seconds, "points": points,
                    **extra})
    for name, run_dir in [(k, v) for k, v in args.finished.items() if k not in out["recipes"]]:
        pipe = load_pipeline(run_dir / "vae.safetensors", run_dir / "ldm.safetensors",
                             run_dir / "controlnet.safetensors", device=resolve_device(base.device))
        ldm_clock = trained_seconds(run_dir / "ldm" / "ldm-train-metrics.jsonl")
        cn_clock = trained_seconds(run_dir / "controlnet" / "controlnet-train-metrics.jsonl")
        ldm_steps, cn_steps = max(ldm_clock), max(cn_clock)
        point = {"controlnet_step": cn_steps, "train_seconds": ldm_clock[ldm_steps] + cn_clock[cn_steps],
                 **judge(pipe, base, 10_000)}  # the invocation's sampler, not the run's own
        print(json.dumps({"finished": name, **point}), flush=True)
        save(name, {"finished_run": str(run_dir), "ldm_steps": ldm_steps, "ldm_seconds": ldm_clock[ldm_steps],
                    "points": [point]})
    out["summary"] = summarise(out, reference_final=target)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
