"""Sampling-side levers of a trained run, measured on its held-out patients: guidance, control scale, and the
ControlNet at an earlier training step (its step checkpoint's EMA weights). Writes the evaluation's metrics JSON.

    python -m bench.levers --run runs/acdc --guidance 4.0 --out /tmp/levers/g4.json
    python -m bench.levers --run runs/acdc --controlnet runs/acdc/controlnet/controlnet-train-step0001500.safetensors \\
        --out /tmp/levers/cn1500.json

Same split, prompts, masks and seeds as the run's own evaluation (train.py's mirror of the test set), so only the
lever differs. Nothing is written into the run folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from controlnet.model import ControlNet
from data.slices import SliceSet
from ddpm.checkpoint import load_checkpoint, model_state
from evaluation.report import evaluate, write_outputs
from run.config import load_run_config
from run.pipeline import load_pipeline
from run.prepare_data import prepare_data
from run.train_vae import reconstruct


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--controlnet", type=Path, help="a step checkpoint of the run's ControlNet (its EMA weights)")
    p.add_argument("--guidance", type=float)
    p.add_argument("--control-scale", type=float)
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace"), help="sampling timestep spacing")
    p.add_argument("--steps-offset", type=int, help="added to every sampling timestep (leading + 1 = Stable Diffusion)")
    p.add_argument("--samples-per-mask", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    cfg = load_run_config(str(args.run / "config.yaml"))
    (cache,) = sorted((args.run / "cache").glob("slices-*.npz"))
    with tempfile.TemporaryDirectory() as scratch:
        data = prepare_data(replace(cfg.data, root=str(cache)), Path(scratch), progress=False)
    final = args.run / "controlnet.safetensors"
    pipe = load_pipeline(args.run / "vae.safetensors", args.run / "ldm.safetensors", final if args.controlnet is None else None)
    if args.controlnet is not None:  # a step checkpoint: the run's ControlNet architecture, its EMA weights
        net = ControlNet(pipe.ldm.unet, cfg.controlnet, cfg.vae.downsample_factor)
        net.load_state_dict(model_state(load_checkpoint(args.controlnet)[0], "ema"))
        pipe.controlnet = net.eval().requires_grad_(False)
    s = cfg.sample
    guidance = s.guidance if args.guidance is None else args.guidance
    scale = s.control_scale if args.control_scale is None else args.control_scale
    spacing = s.spacing if args.spacing is None else args.spacing
    offset = s.steps_offset if args.steps_offset is None else args.steps_offset
    n, k = len(data.test), args.samples_per_mask
    rows = [i for _ in range(k) for i in range(n)]
    tic = time.perf_counter()
    images = []
    for start in range(0, len(rows), s.batch_size):
        idx = rows[start:start + s.batch_size]
        seeds = [10_000 + j for j in range(start, start + len(idx))]  # the run's mirror seeds
        images.append(pipe.generate([data.test.prompts[i] for i in idx], data.test.masks[idx], seed=seeds,
                                    sampler=s.sampler, steps=s.steps, eta=s.eta, guidance=guidance, control_scale=scale,
                                    spacing=spacing, steps_offset=offset))
    seconds = time.perf_counter() - tic
    ids = [f"lever-{j:05d}" for j in range(len(rows))]
    fake = SliceSet(np.concatenate(images), data.test.masks[rows], ids, np.zeros(len(rows)),
                    data.test.attributes.iloc[rows].reset_index(drop=True).assign(subject_id=ids))
    pixel_mm = cfg.data.preprocess.crop_mm / cfg.data.preprocess.size
    metrics = evaluate(data.train, data.test, fake, cfg.evaluation, progress=False, spacing_mm=pixel_mm,
                       fake_subjects=[data.test.subject_ids[i] for i in rows],
                       reconstructed=reconstruct(pipe.vae, data.test.images))
    metrics["lever"] = {"controlnet": str(args.controlnet or args.run / "controlnet.safetensors"), "guidance": guidance,
                        "control_scale": scale, "spacing": spacing,
                        "steps_offset": offset, "samples_per_mask": k, "sampling_seconds": round(seconds, 1),
                        "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_outputs(metrics, args.out, args.out.with_suffix(".md"))
    print(json.dumps({"lever": metrics["lever"], "targets": metrics["targets"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
