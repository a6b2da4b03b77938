"""cardiac-ldm training CLI: `python train.py --stage vae|ldm|controlnet|all [--config FILE] [key=value ...]`.

Every stage writes into runs/<name>/; a finished stage is skipped on the next call (use --force STAGE).
`torchrun --nproc_per_node=N train.py ...` trains the VAE, LDM and ControlNet stages data-parallel (batch_size is
the global batch); rank 0 alone writes, and runs the plan, evaluation and experiment stages.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import yaml

from data.errors import InputError
from ddpm.trainer import NonFiniteLoss

STAGES = ("data", "vae", "ldm", "controlnet", "plan", "evaluation", "experiment")  # in run order
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the cardiac latent diffusion pipeline (VAE -> LDM -> ControlNet) on a cohort, "
                    "by default on the embedded synthetic cohort.",
        epilog="Overrides: section.key=value, e.g. `vae_train.steps=200 data.synthetic_n=100`.")
    parser.add_argument("--stage", default="all", choices=("vae", "ldm", "controlnet", "all"),
                        help="train up to this stage; all = the main job: + plan, samples, evaluation, "
                             "debiasing arms and report (default: all)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML/JSON config (default: configs/tiny.yaml, the CPU preset)")
    parser.add_argument("--data", default=None, help="cohort folder (UK Biobank or ACDC layout); default: synthetic")
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--runs", default="runs", help="folder holding run folders (default: runs)")
    parser.add_argument("--clip-weights", default=None,
                        help="local open_clip weights file for a pretrained text tower (needs the [clip] extra; "
                             "nothing is downloaded); sets text.open_clip_weights")
    parser.add_argument("--clip-model", default=None, help="open_clip model name of --clip-weights, e.g. ViT-B-32")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    parser.add_argument("--force", action="append", default=[], choices=STAGES, help="redo this stage (repeatable)")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return parser.parse_args(argv)


# The config sections a stage's weights depend on (its own and its parents'); bookkeeping keys do not count.
STAGE_SECTIONS = {"vae": ("data", "vae", "vae_train")}
STAGE_SECTIONS["ldm"] = STAGE_SECTIONS["vae"] + ("text", "unet", "diffusion", "ldm_train")
STAGE_SECTIONS["controlnet"] = STAGE_SECTIONS["ldm"] + ("controlnet", "controlnet_train")
BOOKKEEPING = ("log_every", "sample_every", "checkpoint_every", "keep_last", "compile")  # weights do not depend on these
PARENT = {"ldm": "vae", "controlnet": "ldm"}


def check_reusable(cfg, run_dir: Path, stages: tuple[str, ...], force: list[str]) -> None:
    """A finished stage is reused only when trained with this config and on the parent checkpoint now in the run."""
    from ddpm.checkpoint import file_sha256, load_checkpoint
    from ddpm.config import to_dict

    now, defaults = to_dict(cfg), to_dict(type(cfg)())
    for stage in stages:
        path = run_dir / f"{stage}.safetensors"
        if stage in force or not path.is_file():
            continue
        meta = load_checkpoint(path, expect_stage=stage)[1]
        # a key the checkpoint's config lacks was added to the code later: that run had the key's default
        then = {section: {**defaults[section], **meta.get("config", {}).get(section, {})}
                for section in STAGE_SECTIONS[stage]}
        changed = [f"{section}.{key}: {then[section][key]!r} -> {value!r}" for section in STAGE_SECTIONS[stage]
                   for key, value in now[section].items() if key not in BOOKKEEPING and then[section][key] != value]
        if changed:
            raise InputError(path, f"trained with another config ({'; '.join(changed[:3])}); "
                                   f"use --force {stage} to retrain it, or another --name")
        parent = PARENT.get(stage)
        if parent in force:
            raise InputError(path, f"--force {parent} retrains the {parent} this {stage} was trained on; "
                                   f"add --force {stage}")
        if parent and meta.get(parent) is not None and (run_dir / f"{parent}.safetensors").is_file() and \
                meta[parent] != file_sha256(run_dir / f"{parent}.safetensors"):
            raise InputError(path, f"trained on another {parent} than {run_dir / f'{parent}.safetensors'}; "
                                   f"use --force {stage}")


def run(args: argparse.Namespace) -> Path:
    from run.train_controlnet import train_controlnet
    from run.prepare_data import prepare_data
    from data.subgroups import format_composition, subgroup_table
    from ddpm.config import to_dict
    from run.config import load_run_config
    from run.train_ldm import train_ldm
    from run.train_vae import train_vae
    from data.atomic import atomic_write_bytes
    from ddpm.distributed import barrier, init_from_env

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else []) + \
        ([f"name={args.name}"] if args.name else []) + \
        ([f"text.open_clip_weights={args.clip_weights}"] if args.clip_weights else []) + \
        ([f"text.open_clip_model={args.clip_model}"] if args.clip_model else [])
    cfg = load_run_config(args.config, overrides)
    dp = init_from_env(cfg.device)
    for section in ("vae_train", "ldm_train", "controlnet_train"):  # before anything is written
        dp.rows(getattr(cfg, section).batch_size, where=f"{section}.batch_size")
    main = dp.is_main
    run_dir = Path(args.runs) / cfg.name
    wanted = STAGES[1:] if args.stage == "all" else (args.stage,)
    last = tuple(STAGE_SECTIONS).index("controlnet" if args.stage == "all" else args.stage)
    check_reusable(cfg, run_dir, tuple(STAGE_SECTIONS)[:last + 1], args.force)  # before config.yaml is rewritten
    commands = [" ".join(["python", "train.py", *sys.argv[1:]]) if sys.argv[1:] else "python train.py"]
    # Seconds per stage, kept across invocations: a resumed run's report still shows what each stage took.
    timings_path = run_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def stage(name: str, output: Path, fn) -> Path:
        if output.is_file() and name not in args.force:
            if main:
                print(f"[{name}] done already: {output} (use --force {name} to redo)")
            return output
        tic = time.perf_counter()
        args.force = sorted(set(args.force) | set(STAGES[STAGES.index(name) + 1:]))  # later outputs are now stale
        result = fn()
        timings[name] = round(time.perf_counter() - tic, 1)
        if main:
            atomic_write_bytes(timings_path, json.dumps(timings, indent=1).encode())
            print(f"[{name}] finished in {timings[name]:.0f} s -> {result}")
        return result

    # First: bad data fails before the run folder is written to. Rank 0 fills the cache, the others read it.
    data = prepare_data(cfg.data, run_dir) if main else None
    barrier()
    if data is None:
        with contextlib.redirect_stdout(io.StringIO()):  # rank 0 has said it all
            data = prepare_data(cfg.data, run_dir, progress=False)
    if main:
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
        print(f"[data] {len(data.train)} train / {len(data.test)} test slices from {data.cohort_root} ({data.layout})"
              + (f"; skipped {len(data.skipped)} subjects" if data.skipped else ""))
        subjects = data.train.attributes.drop_duplicates("subject_id")  # a real cohort has several slices a subject
        print(format_composition(subgroup_table(subjects)))  # the imbalance the main job addresses
    # Stages a later stage needs run first (or are skipped when their output exists).
    vae = stage("vae", run_dir / "vae.safetensors", lambda: train_vae(cfg, data.train, data.test, run_dir, args.resume))
    if "ldm" not in wanted and "controlnet" not in wanted:
        return run_dir
    ldm = stage("ldm", run_dir / "ldm.safetensors", lambda: train_ldm(cfg, data.train, vae, run_dir, args.resume))
    if "controlnet" not in wanted:
        return run_dir
    controlnet = stage("controlnet", run_dir / "controlnet.safetensors",
                       lambda: train_controlnet(cfg, data.train, data.test, vae, ldm, run_dir, args.resume))
    if args.stage == "all" and main:
        from run.downstream import run_downstream

        ckpts = {"vae": vae, "ldm": ldm, "controlnet": controlnet}
        report = run_downstream(cfg, data, ckpts, run_dir, args, commands, timings, stage)
        print(f"[report] {report}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    from ddpm.distributed import shutdown

    args = parse_args(argv)
    try:
        run_dir = run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        shutdown()
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
