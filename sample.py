"""cardiac-ldm sampling CLI: generate cardiac cine slices (ED/ES) from a prompt and, optionally, a mask.

    python sample.py --run runs/tiny --prompt "Female, age in 40s, normal BMI, heart failure" --mask ED.nii.gz
    python sample.py --run runs/tiny --sex F --age 47 --bmi 22 --health heart_failure --n 4      # LDM alone
    python sample.py --run runs/tiny --make-plan plan.csv --mode equalise                       # rebalancing plan
    python sample.py --run runs/tiny --plan plan.csv --out synthetic/                           # batch, resumable
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from data.errors import InputError, OneLineArgumentParser

LAYOUT_LABELS = ("ukbb", "acdc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineArgumentParser(
        prog="python sample.py", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="outputs per sample in --out:\n"
               "  <id>.nii.gz       float32 S x S x 2 (ED, ES) on the preprocessed grid (crop_mm / size mm pixels)\n"
               "  <id>_mask.nii.gz  the control mask (uint8, internal labels 1 LV, 2 MYO, 3 RV)\n"
               "  <id>.png          ED | ES\n"
               "  <id>.json         prompt, seed, settings, checkpoint sha256, mask source (written last)\n"
               "  grid.png          the call's samples with mask overlays\n"
               "Rerunning the same call skips complete samples (resume). Errors: one line on stderr, exit code 2.")
    src = p.add_argument_group("models")
    src.add_argument("--run", type=Path, metavar="DIR", help="run folder from train.py (vae/ldm/controlnet.safetensors, cache/)")
    src.add_argument("--vae", type=Path, metavar="FILE", help="VAE checkpoint (default: <run>/vae.safetensors)")
    src.add_argument("--ldm", type=Path, metavar="FILE", help="LDM checkpoint (default: <run>/ldm.safetensors)")
    src.add_argument("--controlnet", type=Path, metavar="FILE", help="ControlNet checkpoint (default: <run>/controlnet.safetensors)")
    src.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: cuda when available)")
    what = p.add_argument_group("what to generate (a prompt, or fields, or --plan)")
    what.add_argument("--prompt", help='e.g. "Female, age in 40s, normal BMI, heart failure"')
    what.add_argument("--sex", help="female/male (F/M)")
    what.add_argument("--age", help="years")
    what.add_argument("--bmi", help="kg/m^2")
    what.add_argument("--health", help="e.g. healthy, heart_failure, myocardial_infarction")
    what.add_argument("--position", help="slice position basal/mid/apical (models trained with all_lv_slices)")
    what.add_argument("--mask", type=Path, metavar="FILE", help="ED mask: NIfTI (2D/3D) or PNG label image; without it the LDM alone")
    what.add_argument("--mask-es", type=Path, metavar="FILE", help="ES mask (default: the ED mask, with a warning)")
    what.add_argument("--labels", default="ukbb", choices=LAYOUT_LABELS,
                      help="mask label convention: ukbb (1 LV, 2 MYO, 3 RV) or acdc (1 RV, 2 MYO, 3 LV); default ukbb")
    what.add_argument("--slice", type=int, metavar="K", help="mask slice to use (default: the mid-LV slice)")
    what.add_argument("--n", type=int, default=1, help="number of samples (seeds --seed, --seed+1, ...); default 1")
    what.add_argument("--plan", type=Path, metavar="CSV", help="plan CSV (data/planner.py): batch mode, resumable")
    what.add_argument("--slices", type=Path, metavar="NPZ", help="slice set the plan's mask_row refers to (default: the run's cache)")
    how = p.add_argument_group("sampling (defaults: the run config's `sample` section)")
    how.add_argument("--sampler", choices=("ddim", "ddpm"))
    how.add_argument("--steps", type=int)
    how.add_argument("--eta", type=float)
    how.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    how.add_argument("--control-scale", type=float, help="ControlNet residual scale")
    how.add_argument("--batch-size", type=int)
    how.add_argument("--seed", type=int, default=0, help="base seed: sample i uses seed + i; also the plan's seed (default 0)")
    how.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: <run>/samples)")
    how.add_argument("--overwrite", action="store_true", help="regenerate samples that exist already")
    plan = p.add_argument_group("rebalancing plan (--make-plan)")
    plan.add_argument("--make-plan", type=Path, metavar="CSV", help="write a plan from the run's training split and exit")
    plan.add_argument("--mode", default="equalise", choices=("equalise", "min_count"))
    plan.add_argument("--min-count", type=int, default=0, metavar="N",
                      help="mode min_count: samples per cell; mode equalise: a floor per cell")
    plan.add_argument("--conditions", metavar="LIST", help="comma-separated health conditions to synthesise (default: all present)")
    plan.add_argument("--keys", default="health,sex,age_group,bmi_group", metavar="LIST",
                      help="cell keys (default health,sex,age_group,bmi_group; e.g. health,bmi_group for ACDC)")
    plan.add_argument("--max-total", type=int, metavar="N", help="cap on the number of planned samples")
    return p.parse_args(argv)


def _checkpoints(args) -> dict:
    run = args.run
    if run is not None and not run.is_dir():
        raise InputError(run, "run folder not found")

    def pick(given, name):
        if given is not None:
            return given
        if run is None:
            raise InputError(f"--{name}", "no checkpoint: pass --run or --" + name)
        return run / f"{name}.safetensors"

    wants_control = args.mask is not None or args.plan is not None
    if not wants_control and (args.mask_es is not None or args.slice is not None):
        raise InputError("--mask", "--mask-es and --slice need --mask")
    return {"vae": pick(args.vae, "vae"), "ldm": pick(args.ldm, "ldm"),
            "controlnet": pick(args.controlnet, "controlnet") if wants_control else None}


def _prompt(args) -> str:
    from data.prompts import prompt_from_fields, prompt_to_attributes

    fields = {k: getattr(args, k) for k in ("sex", "age", "bmi", "health", "position") if getattr(args, k) is not None}
    if args.prompt is not None and fields:
        raise InputError("--prompt", f"give a prompt or fields ({', '.join('--' + k for k in fields)}), not both")
    if args.prompt is not None:
        prompt_to_attributes(args.prompt)  # validates: unknown parts name the vocabulary
        return args.prompt
    return prompt_from_fields(**fields)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError("--device", f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA is not available on this machine; use --device cpu")
    return device


def make_plan(args) -> int:
    import json

    from controlnet.batch import find_slice_set
    from data.attributes import normalise_health
    from data.planner import PlanTarget, composition_after, plan_rebalancing, planning_attributes, save_plan
    from data.slices import SliceSet
    from ddpm.run_config import load_run_config

    if args.run is None:
        raise InputError("--make-plan", "needs --run (the run's training split and slice set)")
    cfg = load_run_config(str(args.run / "config.yaml"))
    split = args.run / "split.json"
    if not split.is_file():
        raise InputError(split, "no split file; train the run first (python train.py)")
    train_ids = set(json.loads(split.read_text())["train"])
    slices = SliceSet.load(args.slices) if args.slices else find_slice_set(args.run, cfg, train_ids)[1]
    conditions = None if args.conditions is None else \
        tuple(normalise_health(c, "--conditions") for c in args.conditions.split(","))
    target = PlanTarget(keys=tuple(k.strip() for k in args.keys.split(",")), mode=args.mode, min_count=args.min_count, conditions=conditions, max_total=args.max_total)
    attributes = planning_attributes(slices, train_ids)
    plan = plan_rebalancing(attributes, target, args.seed)
    save_plan(plan, args.make_plan)
    print(composition_after(attributes, plan).to_string(index=False))
    print(f"plan: {len(plan)} samples ({int(plan['jitter'].sum())} reuse a mask with jitter) -> {args.make_plan}")
    return 0


def run(args) -> int:
    from controlnet.batch import SampleRequest, SampleSettings, checkpoint_record, find_slice_set, plan_requests, run_requests
    from data.mask_input import load_control_masks
    from data.planner import load_plan
    from data.slices import SliceSet
    from ddpm.pipeline import load_pipeline

    if args.make_plan is not None:
        return make_plan(args)
    if args.plan is not None and (args.prompt or args.mask or any(getattr(args, k) for k in ("sex", "age", "bmi", "health", "position"))):
        raise InputError("--plan", "the plan gives prompts and masks; pass no --prompt, fields or --mask with it")
    if args.n < 1:
        raise InputError("--n", f"expected at least 1 sample, got {args.n}")
    prompt = None if args.plan is not None else _prompt(args)
    plan = None if args.plan is None else load_plan(args.plan)
    paths = _checkpoints(args)
    out = args.out or (args.run / "samples" if args.run else None)
    if out is None:
        raise InputError("--out", "no output folder: pass --out (or --run)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder; --out names the output folder")
    try:
        pipe = load_pipeline(paths["vae"], paths["ldm"], paths["controlnet"], device=_device(args.device))
    except RuntimeError as err:  # e.g. a ControlNet trained on another LDM: weights do not fit
        raise InputError(", ".join(str(p) for p in paths.values() if p), f"checkpoints do not fit together: "
                         f"{str(err).splitlines()[0]}") from None
    names = ("sampler", "steps", "eta", "guidance", "control_scale", "batch_size")
    settings = SampleSettings(**{k: getattr(pipe.cfg.sample, k) if getattr(args, k) is None else getattr(args, k)
                                 for k in names})  # unset options: the run config's defaults
    if plan is not None:
        slices_path, slices = args.slices, None
        needed = set(plan["mask_subject_id"][plan["mask_row"].notna()])
        if slices_path is not None:
            slices = SliceSet.load(slices_path)
        elif args.run is not None and needed:
            slices_path, slices = find_slice_set(args.run, pipe.cfg, needed)
        requests = plan_requests(plan, pipe.cfg, slices, slices_path, args.plan.parent, args.labels)
    else:
        mask, source = None, {"kind": "none"}
        if args.mask is not None:
            mask = load_control_masks(args.mask, args.mask_es, pipe.cfg.data.preprocess, args.labels, args.slice)
            source = {"kind": "file", "ed": str(args.mask), "es": None if args.mask_es is None else str(args.mask_es),
                      "labels": args.labels, "slice": args.slice}
        requests = [SampleRequest(f"sample-{i:03d}", prompt, args.seed + i, mask, source) for i in range(args.n)]
    done, skipped = run_requests(pipe, requests, out, settings, checkpoint_record(paths), args.overwrite)
    print(f"{len(done)} generated, {len(skipped)} already complete -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad option (2, one line already printed)
        return int(done.code or 0)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        try:
            return run(args)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # e.g. an output folder that cannot be written
            print(f"error: {err.filename or 'file system'}: {err.strerror or err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume (complete samples are kept)", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
