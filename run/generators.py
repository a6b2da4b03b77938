"""Separately trained generators: the run's own, plus one per `generators.extra_seeds`, all sampling the same plan.

A gain that one lucky generator makes is not the method's: the experiment trains its synthetic arms once per
generator and its intervals resample generators beside test subjects and classifier seeds. Each extra generator is a
complete sub-run in generators/seed-<s>/ (its own VAE, LDM and ControlNet, every training seed set to s) on the same
training data, config and plan (the plan is seeded by `plan`, not by the generator), run by the same stage runner.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from data.atomic import atomic_write_bytes
from ddpm.checkpoint import file_sha256
from run.config import FreshTestConfig, GeneratorsConfig, RunConfig
from run.state import CHECKPOINTS, RunState

MANIFEST = "generators/generators.json"


def generator_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The run's config with every generative training seed set to `seed` (and no generators of its own)."""
    return replace(cfg, name=f"{cfg.name}-seed-{seed}", vae_train=replace(cfg.vae_train, seed=seed),
                   ldm_train=replace(cfg.ldm_train, seed=seed), controlnet_train=replace(cfg.controlnet_train, seed=seed),
                   generators=GeneratorsConfig(), fresh_test=FreshTestConfig())


def generator_folders(cfg: RunConfig, run_dir: Path) -> list[Path]:
    """Run folders holding each generator's checkpoints and plan samples: the run itself first."""
    return [Path(run_dir)] + [Path(run_dir) / "generators" / f"seed-{s}" for s in cfg.generators.extra_seeds]


def train_generators(run: RunState, run_stages: Callable[..., Path]) -> Path:
    """Train (or reuse) each extra generator up to its plan samples; write generators/generators.json.

    run_stages: run.stages.run_stages, passed in because this module sits below the stage table."""
    folders = generator_folders(run.cfg, run.dir)
    for seed, folder in zip(run.cfg.generators.extra_seeds, folders[1:]):
        print(f"[generators] seed {seed} -> {folder}")
        # a rerun plan in the main run is a changed plan: the extra generators resample it too
        run_stages(generator_config(run.cfg, seed), folder, "plan", run.resume, ("plan",) if "plan" in run.force else ())
    configs = [run.cfg] + [generator_config(run.cfg, s) for s in run.cfg.generators.extra_seeds]
    manifest = {"generators": [
        {"folder": str(f.relative_to(run.dir)), "seeds": {f"{name}_train": getattr(c, f"{name}_train").seed
                                                          for name in CHECKPOINTS},
         "sha256": {name: file_sha256(f / f"{name}.safetensors") for name in CHECKPOINTS}}
        for f, c in zip(folders, configs)]}
    atomic_write_bytes(run.dir / MANIFEST, json.dumps(manifest, indent=1).encode())
    return run.dir / MANIFEST
