"""Evaluate generated cardiac images against real ones: FID/KID with a real-vs-real bound, per-subgroup FID,
control fidelity (Dice, shape descriptors), attribute fidelity, diversity and memorisation.

    python -m evaluation --real runs/tiny/cache/slices-....npz --fake runs/tiny/samples --out eval/metrics.json
    python -m evaluation --real test.npz --real-train train.npz --fake samples/ --inception-weights pt_inception.pth \\
        --out eval/metrics.json evaluation.fid_n=200 device=cuda

Settings: the `evaluation` section and `device` of the run config (defaults, or --config FILE, e.g. a run's
config.yaml), with the same `section.key=value` overrides as train.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.atomic import check_outputs_spare_inputs
from data.errors import InputError, OneLineArgumentParser
from ddpm.distributed import resolve_device
from evaluation.image_sets import load_image_set, split_by_subject
from evaluation.report import evaluate, write_outputs
from run.config import load_run_config

READS = ("evaluation", "device")  # the config keys this command takes overrides of


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineArgumentParser(
        prog="python -m evaluation", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="Writes --out (metrics.json, NaN as null), the same name with .md (a Markdown table) and .png "
               "(a figure). Without --inception-weights the FID features come from a segmenter trained here on the "
               "real training images (no Inception weights ship with cardiac-ldm and nothing is downloaded); every "
               "report names its extractor. Bad input exits 2 with one line 'error: ...'.")
    data = p.add_argument_group("images (a folder of sample.py outputs, or a slice-set .npz)")
    data.add_argument("--real", type=Path, required=True,
                      help="real reference images (held-out test set); FID/KID and the bound are computed on them")
    data.add_argument("--fake", type=Path, required=True, help="generated samples: folder of <id>.nii.gz + <id>.json")
    data.add_argument("--real-train", type=Path, help="the generator's real training images: train the segmenter and "
                                                      "attribute classifiers, memorisation check (default: half the "
                                                      "subjects of --real, the other half is the test set)")
    data.add_argument("--spacing-mm", type=float, help="pixel size of the preprocessed grid, for shape descriptors "
                                                       "(default: the samples' sidecars, else 2.0)")
    how = p.add_argument_group("metrics")
    how.add_argument("--inception-weights", type=Path, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth; "
                                                            "gives standard FID features")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="metrics JSON path; .md and .png are written beside it")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--config", type=Path, metavar="FILE", help="run config to take the evaluation section from")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides of evaluation.* or device, e.g. evaluation.fid_n=200 "
                        "evaluation.segmenter_steps=100 device=cuda")
    return p.parse_args(argv)


def _check_args(args) -> None:
    if args.spacing_mm is not None and not args.spacing_mm > 0:
        raise InputError("--spacing-mm", f"expected a positive pixel size in mm, got {args.spacing_mm}")
    for path in _outputs(args.out):  # before any metric is computed
        if path.is_dir():
            raise InputError(path, "is a folder; --out names the metrics JSON file (.md and .png are written beside "
                                   "it), e.g. eval/metrics.json")
    check_outputs_spare_inputs(_outputs(args.out), (args.real, args.real_train, args.fake, args.config,
                                                    args.inception_weights))
    sets = {"--real": args.real, "--real-train": args.real_train, "--fake": args.fake}
    named = [(flag, path.resolve()) for flag, path in sets.items() if path is not None]
    for i, (flag, path) in enumerate(named):  # the same images on two sides would report a perfect score
        for other, other_path in named[i + 1:]:
            if path == other_path:
                raise InputError(other, f"is the same as {flag} ({path}); expected different image sets "
                                        "(real test, real training, generated)")


def _outputs(out: Path) -> tuple[Path, Path, Path]:
    return out, out.with_suffix(".md"), out.with_suffix(".png")


def run(args) -> int:
    _check_args(args)
    run_cfg = load_run_config(args.config, args.overrides, reads=READS)
    cfg, device = run_cfg.evaluation, resolve_device(run_cfg.device)
    progress = not args.quiet
    real = load_image_set(args.real, progress)
    fake = load_image_set(args.fake, progress)
    notes = []
    if args.real_train is None:
        real_train, real_test = split_by_subject(real, 0.5, cfg.seed)
        notes.append(f"no --real-train: {args.real} was split by subject into {len(set(real_train.subject_ids))} "
                     f"training and {len(set(real_test.subject_ids))} test subjects; the memorisation check then "
                     "compares with those training subjects, not the generator's")
    else:
        real_train, real_test = load_image_set(args.real_train, progress), real
        shared = set(real_train.subject_ids) & set(real_test.subject_ids)
        if shared:
            notes.append(f"{len(shared)} subject(s) are in both --real-train and --real (e.g. {sorted(shared)[0]}): "
                         "the segmenter has seen test images and the memorisation ratio is biased low")
    metrics = evaluate(real_train, real_test, fake, cfg, args.inception_weights, progress, args.spacing_mm,
                       device=device)
    metrics["notes"] = notes + metrics["notes"]
    try:
        paths = write_outputs(metrics, *_outputs(args.out))
    except OSError as err:
        raise InputError(args.out, f"cannot write the outputs ({err.strerror or err})") from None
    fid = metrics["fid"]
    summary = fid.get("skipped") or (f"FID {fid['fake_vs_real']['mean']:.4g} ± {fid['fake_vs_real']['std']:.2g} "
                                     f"(real-vs-real bound {fid['real_vs_real_bound']['mean']:.4g}, "
                                     f"n={fid['n_per_side']}/side)")
    print(f"{summary}; features: {metrics['extractor']['name']}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, whatever the message
        return 2


if __name__ == "__main__":
    sys.exit(main())
