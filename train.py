"""cardiac-ldm training CLI: `python train.py --stage vae|ldm|controlnet|all [--config FILE] [key=value ...]`.

Every stage writes into runs/<name>/; a finished stage is skipped on the next call (use --force STAGE).
`torchrun --nproc_per_node=N train.py ...` trains the VAE, LDM and ControlNet stages data-parallel (batch_size is
the global batch); rank 0 alone writes, and runs the plan, evaluation and experiment stages.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.errors import InputError
from ddpm.distributed import shutdown
from ddpm.trainer import NonFiniteLoss
from run.config import load_run_config
from run.cv import run_cv
from run.stages import FORCEABLE, TRAINED, run_stages

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the cardiac latent diffusion pipeline (VAE -> LDM -> ControlNet) on a cohort, "
                    "by default on the embedded synthetic cohort.",
        epilog="Overrides: section.key=value, e.g. `vae_train.steps=200 data.synthetic_n=100`.")
    parser.add_argument("--stage", default="all", choices=(*TRAINED, "all"),
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
    parser.add_argument("--force", action="append", default=[], choices=FORCEABLE,
                        help="redo this stage (repeatable)")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else []) + \
        ([f"name={args.name}"] if args.name else []) + \
        ([f"text.open_clip_weights={args.clip_weights}"] if args.clip_weights else []) + \
        ([f"text.open_clip_model={args.clip_model}"] if args.clip_model else [])
    cfg = load_run_config(args.config, overrides)
    commands = [" ".join(["python", "train.py", *sys.argv[1:]]) if sys.argv[1:] else "python train.py"]
    if cfg.cv.folds:  # cross-validation: one sub-run of the stage table per fold, then pooled statistics
        return run_cv(cfg, Path(args.runs) / cfg.name, args.stage, args.resume, tuple(args.force), tuple(commands))
    return run_stages(cfg, Path(args.runs) / cfg.name, args.stage, args.resume, tuple(args.force), tuple(commands))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_dir = run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except OSError as err:  # read-only or full disk, a name too long, a file where a folder belongs: one line
        where = err.filename or args.runs
        print(f"error: {where}: {err.strerror or err}; expected a readable cohort and a writable run folder "
              f"(--runs {args.runs})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        shutdown()
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
