"""Training recipes of the time-to-quality bench (bench/time_to_quality.py): names -> config overrides, one recipe
trained on a run's VAE (reusing a sibling recipe's LDM where only the ControlNet or the sampler differs), and its
ControlNet checkpoints as pipelines to judge."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from controlnet.model import ControlNet
from data.errors import InputError
from ddpm.checkpoint import file_sha256, load_checkpoint, model_state, read_meta
from ddpm.distributed import resolve_device
from ddpm.trainer import checkpoint_paths
from run.config import RunConfig, load_run_config
from run.loader import to_dict
from run.pipeline import Pipeline, load_ldm, make_schedule_from
from run.prepare_data import PreparedData
from run.train_controlnet import train_controlnet
from run.train_ldm import train_ldm
from run.train_vae import load_vae

EPS = ["diffusion.prediction=epsilon", "diffusion.zero_terminal_snr=false"]
V_ZTSNR = ["diffusion.prediction=v", "diffusion.zero_terminal_snr=true"]
PLAIN, MIN_SNR = "diffusion.loss_weighting=none", "diffusion.loss_weighting=min_snr"
RECIPES = {  # name -> config overrides on top of the run's config; the loss is spelt out, so a run of any preset serves
    "current": [*EPS, PLAIN],  # the main job's recipe until min_snr replaced it
    "min_snr": [*EPS, MIN_SNR],
    "v_ztsnr": [*V_ZTSNR, PLAIN],
    "v_ztsnr_min_snr": [*V_ZTSNR, MIN_SNR],
    # the LDM's lr decays to 0 at its last step (the ControlNet keeps a constant lr, so its checkpoints stay comparable)
    "cosine": [*EPS, PLAIN, "ldm_train.lr_schedule=cosine"],
    "lr6e-4": [*EPS, PLAIN, "ldm_train.lr=6e-4"],  # twice the preset's LDM lr
    # v_ztsnr sampled with Lin et al.'s guidance rescale (phi 0.7, their value): v's guided images lack fine texture
    "v_ztsnr_rescale": [*V_ZTSNR, PLAIN, "sample.guidance_rescale=0.7"],
    # the ControlNet's lr (preset 2e-4): its quality still climbs at the preset's last step; the LDM is current's
    "cn_lr4e-4": [*EPS, PLAIN, "controlnet_train.lr=4e-4"],
    "cn_lr8e-4": [*EPS, PLAIN, "controlnet_train.lr=8e-4"],
    # current trained as before session 21's attention change (torch's fused kernel in every attention): its clock
    # is the preset's as the issue found it, in the same run as the recipes timed against it
    "current_fused": [*EPS, PLAIN, "unet.attention_backend=fused", "text.attention_backend=fused"],
}
LDM_FREE = ("controlnet", "controlnet_train", "sample")  # config sections the LDM stage's weights do not depend on


def parse_recipe(spec: str, ldm_steps: int) -> tuple[list[str], int]:
    """NAME[@LDM_STEPS][-seedK] -> (config overrides, LDM steps): 'v_ztsnr@600' trains 600 LDM steps, 'current'
    ldm_steps; '-seedK' trains both stages from seed K (init, batches, noise: the training-seed variance; judges and
    samples stay the same), e.g. 'min_snr@900-seed3'."""
    m = re.fullmatch(r"(?P<name>.+?)(?:@(?P<steps>\d+))?(?:-seed(?P<seed>\d+))?", spec)
    if m is None or m["name"] not in RECIPES or (m["steps"] and int(m["steps"]) < 1):
        raise InputError("--recipes", f"expected NAME[@LDM_STEPS][-seedK] with NAME one of {', '.join(RECIPES)}, "
                                      f"got {spec!r}")
    seeds = [] if m["seed"] is None else [f"ldm_train.seed={m['seed']}", f"controlnet_train.seed={m['seed']}"]
    return [*RECIPES[m["name"]], *seeds], int(m["steps"]) if m["steps"] else ldm_steps


def parse_finished(spec: str) -> tuple[str, Path]:
    """'main-eps=runs/tiny' -> ('main-eps', Path('runs/tiny')), the run holding its three checkpoints."""
    name, _, run = spec.partition("=")
    if not name or name in RECIPES or not run:
        raise InputError("--finished", f"expected NAME=RUN with NAME not a recipe's, got {spec!r}")
    missing = [f for f in ("vae.safetensors", "ldm.safetensors", "controlnet.safetensors",
                           "ldm/ldm-train-metrics.jsonl", "controlnet/controlnet-train-metrics.jsonl")
               if not (Path(run) / f).is_file()]
    if missing:
        raise InputError(run, f"not a finished run: no {', '.join(missing)}")
    return name, Path(run)


def stage_overrides(stage: str, steps: int, every: int) -> list[str]:
    return [f"{stage}.steps={steps}", f"{stage}.checkpoint_every={every}", f"{stage}.log_every={every}",
            f"{stage}.keep_last={steps // every + 1}"]


def trained_seconds(metrics: Path) -> dict[int, float]:
    """step -> the trainer's clock (seconds of training since its first step) from a stage's metrics log."""
    return {r["step"]: r["sec"] for r in map(json.loads, metrics.read_text().splitlines())}


def ldm_key(config: dict, vae_sha: str) -> str:
    """What an LDM's weights depend on: its VAE and every config section but LDM_FREE."""
    return json.dumps([vae_sha, {k: v for k, v in config.items() if k not in LDM_FREE}], sort_keys=True)


def trained_twin(cfg: RunConfig, vae_path: Path, out_dir: Path) -> Path | None:
    """A sibling recipe's folder in the same --work whose finished LDM this recipe would train again (same VAE, same
    settings but the ControlNet's or the sampler's: bit for bit on the CPU, where training is deterministic), or
    None."""
    key = ldm_key(to_dict(cfg), file_sha256(vae_path))
    for other in sorted(out_dir.parent.iterdir()):
        ldm = other / "ldm.safetensors"
        if other != out_dir and ldm.is_file() and (other / "ldm" / "ldm-train-metrics.jsonl").is_file():
            meta = read_meta(ldm, expect_stage="ldm")
            if ldm_key(meta["config"], meta["vae"]) == key:
                return other
    return None


def train_recipe(run: Path, overrides: list[str], data: PreparedData, out_dir: Path, ldm_steps: int,
                 controlnet_steps: int, every: int, resume: bool = False) -> tuple[RunConfig, Path, float]:
    """Trains one recipe in out_dir on the run's VAE; returns (config, ldm path, ldm seconds). resume: continue
    (or, when finished, reuse) the stages' checkpoints already in out_dir."""
    cfg = load_run_config(run / "config.yaml", [*overrides, *stage_overrides("ldm_train", ldm_steps, ldm_steps),
                                                *stage_overrides("controlnet_train", controlnet_steps, every)])
    if not resume and any((out_dir / stage).exists() for stage in ("ldm", "controlnet")):
        raise InputError(out_dir, "holds a recipe's checkpoints already: pass --resume to reuse them, or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    vae_path = out_dir / "vae.safetensors"
    shutil.copyfile(run / "vae.safetensors", vae_path)
    for cache in (run / "cache").glob("latents-*.safetensors"):  # keyed by the VAE's sha256: valid here too
        (out_dir / "cache").mkdir(exist_ok=True)
        shutil.copyfile(cache, out_dir / "cache" / cache.name)
    twin = None if (out_dir / "ldm.safetensors").is_file() else trained_twin(cfg, vae_path, out_dir)
    if twin is not None:  # hard links: the twin's files are replaced, never written through, when it resumes
        print(f"{out_dir.name}: the LDM of {twin.name} (same settings before the ControlNet), not trained again")
        shutil.copytree(twin / "ldm", out_dir / "ldm", copy_function=os.link, dirs_exist_ok=True)
        os.link(twin / "ldm.safetensors", out_dir / "ldm.safetensors")
    # a reused LDM is final as it is (resuming it would only save it and sample its grid again)
    ldm_path = out_dir / "ldm.safetensors" if twin is not None else train_ldm(cfg, data.train, vae_path, out_dir,
                                                                               resume=resume)
    ldm_seconds = trained_seconds(out_dir / "ldm" / "ldm-train-metrics.jsonl")[ldm_steps]
    train_controlnet(cfg, data.train, data.test, vae_path, ldm_path, out_dir, resume=resume)
    return cfg, ldm_path, ldm_seconds


def controlnet_pipelines(cfg: RunConfig, out_dir: Path, ldm_path: Path) -> Iterator[tuple[int, Pipeline]]:
    """(step, Pipeline) for every kept ControlNet checkpoint of out_dir, EMA weights, on the final LDM, on
    cfg.device (where the recipe trained)."""
    device = resolve_device(cfg.device)
    vae, scale, _ = load_vae(out_dir / "vae.safetensors", device)
    ldm, _ = load_ldm(ldm_path, device=device)
    sched = make_schedule_from(cfg)
    for path in checkpoint_paths(out_dir / "controlnet", "controlnet-train"):
        states, meta = load_checkpoint(path, expect_stage="controlnet-train")
        net = ControlNet(ldm.unet, cfg.controlnet, cfg.vae.downsample_factor)
        net.load_state_dict(model_state(states, "ema"))
        yield int(meta["step"]), Pipeline(cfg, vae, scale, ldm, sched, net.to(device).eval().requires_grad_(False))
