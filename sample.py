"""cardiac-ldm sampling CLI: generate cardiac cine slices (ED/ES) from a prompt and, optionally, a mask.

    python sample.py --run runs/tiny --prompt "Female, age in 40s, normal BMI, heart failure" --mask ED.nii.gz
    python sample.py --run runs/tiny --sex F --age 47 --bmi 22 --health heart_failure --n 4      # LDM alone
    python sample.py --run runs/tiny --make-plan plan.csv plan.mode=min_count plan.min_count=5  # rebalancing plan
    python sample.py --run runs/tiny --plan plan.csv --out synthetic/ sample.steps=50 device=cuda  # batch, resumable

Settings come from the run's config (<run>/config.yaml, else the LDM checkpoint's) with the same `section.key=value`
overrides as train.py, for the keys this command reads: sample.*, plan.* and device.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from data.errors import InputError, OneLineArgumentParser
from data.limits import MAX_SAMPLES
from data.mask_input import load_control_masks
from data.plan_csv import load_plan, save_plan
from data.planner import composition_after, plan_rebalancing, planning_attributes
from data.prompts import canonical_prompt, prompt_from_fields
from data.slices import SliceSet
from ddpm.checkpoint import read_meta
from ddpm.distributed import resolve_device
from run.config import RunConfig, load_run_config
from run.pipeline import load_pipeline
from run.samples import SampleRequest, checkpoint_record, find_slice_set, plan_requests, run_requests

LAYOUT_LABELS = ("ukbb", "acdc")
READS = ("sample", "plan", "device")  # the config keys this command takes overrides of


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
    what.add_argument("--plan", type=Path, metavar="CSV", help="plan CSV (data/planner.py makes it, data/plan_csv.py checks it): batch mode, resumable")
    what.add_argument("--slices", type=Path, metavar="NPZ", help="slice set the plan's mask_row refers to (default: the run's cache)")
    how = p.add_argument_group("sampling")
    how.add_argument("--seed", type=int, default=0, help="base seed: sample i uses seed + i; also the plan's seed (default 0)")
    how.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: <run>/samples)")
    how.add_argument("--overwrite", action="store_true", help="regenerate samples that exist already")
    how.add_argument("--make-plan", type=Path, metavar="CSV",
                     help="write a rebalancing plan (the config's plan section) from the run's training split and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides of sample.*, plan.* or device, e.g. sample.steps=50 sample.guidance=3 "
                        "plan.mode=min_count plan.min_count=5 device=cuda")
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


def _config(args, ldm: Path | None) -> RunConfig:
    """The run's config.yaml (else the LDM checkpoint's config) with the command line's overrides."""
    path = None if args.run is None else args.run / "config.yaml"
    if path is not None and path.is_file():
        return load_run_config(path, args.overrides, reads=READS)
    if ldm is None:
        raise InputError(path or "--run", "no run config: train the run first (python train.py)")
    return load_run_config(None, args.overrides, base=read_meta(ldm, "ldm")["config"], reads=READS,
                           where=f"{ldm}: config")


def _prompt(args) -> str:
    fields = {k: getattr(args, k) for k in ("sex", "age", "bmi", "health", "position") if getattr(args, k) is not None}
    for name, value in fields.items():  # a blank value would silently drop the field from the prompt
        if not value.strip():
            raise InputError(f"--{name}", "empty value; expected a value, or leave the option out")
    if args.prompt is not None and fields:
        raise InputError("--prompt", f"give a prompt or fields ({', '.join('--' + k for k in fields)}), not both")
    if args.prompt is not None:
        return canonical_prompt(args.prompt)  # validates (unknown parts name the vocabulary), one spelling
    return prompt_from_fields(**fields)


def make_plan(args) -> int:
    if args.run is None:
        raise InputError("--make-plan", "needs --run (the run's training split and slice set)")
    cfg = _config(args, None)
    split = args.run / "split.json"
    if not split.is_file():
        raise InputError(split, "no split file; train the run first (python train.py)")
    train_ids = set(json.loads(split.read_text())["train"])
    slices = SliceSet.load(args.slices) if args.slices else find_slice_set(args.run, cfg, train_ids)[1]
    attributes = planning_attributes(slices, train_ids)
    plan = plan_rebalancing(attributes, cfg.plan, args.seed)
    save_plan(plan, args.make_plan)
    print(composition_after(attributes, plan).to_string(index=False))
    print(f"plan: {len(plan)} samples ({int((plan['jitter'] == 1).sum())} reuse a mask with jitter, "
          f"{int((plan['jitter'] == 2).sum())} deform theirs) -> {args.make_plan}")
    return 0


def run(args) -> int:
    if args.make_plan is not None:
        return make_plan(args)
    if args.plan is not None and (args.prompt or args.mask or any(getattr(args, k) for k in ("sex", "age", "bmi", "health", "position"))):
        raise InputError("--plan", "the plan gives prompts and masks; pass no --prompt, fields or --mask with it")
    if not 1 <= args.n <= MAX_SAMPLES:  # the request list is built up front: its size must be bounded
        raise InputError("--n", f"expected 1..{MAX_SAMPLES} samples, got {args.n}")
    prompt = None if args.plan is not None else _prompt(args)
    plan = None if args.plan is None else load_plan(args.plan)
    paths = _checkpoints(args)
    out = args.out or (args.run / "samples" if args.run else None)
    if out is None:
        raise InputError("--out", "no output folder: pass --out (or --run)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder; --out names the output folder")
    cfg = _config(args, paths["ldm"])
    try:
        pipe = load_pipeline(paths["vae"], paths["ldm"], paths["controlnet"], device=resolve_device(cfg.device))
    except RuntimeError as err:  # e.g. a ControlNet trained on another LDM: weights do not fit
        raise InputError(", ".join(str(p) for p in paths.values() if p), f"checkpoints do not fit together: "
                         f"{str(err).splitlines()[0]}") from None
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
    inputs = (args.plan, args.slices, None if args.run is None else args.run / "config.yaml")
    done, skipped = run_requests(pipe, requests, out, cfg.sample, checkpoint_record(paths), args.overwrite,
                                 inputs=[p for p in inputs if p is not None])
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
