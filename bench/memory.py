"""Memory of one ControlNet training step (frozen LDM + trainable ControlNet): an estimate and a CPU check.

python -m bench.memory --config paper --batch 8 --out bench/memory-paper.json

Estimate = frozen LDM weights + ControlNet weights, grads, AdamW (2 states), EMA copy + activations, where
activations = bytes of the tensors autograd saves for backward (counted with saved_tensors_hooks, one forward,
parameters excluded, storages counted once). Check: the same estimate for fp32 CPU steps against the peak RSS
growth (ru_maxrss) over two real steps (forward, backward, AdamW) measured in a fresh subprocess.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.build_refs import config_path
from bench.run import atomic_write_json
from controlnet.model import ControlNet
from run.pipeline import LatentDiffusion
from run.config import load_run_config
from ddpm.tokenizer import Tokenizer
from ddpm.trainer import autocast_context
from geometry.encodings import control_channels

MIB = 2 ** 20


def build(config: str, batch: int, checkpointing: bool):
    """(frozen ldm, trainable controlnet, loss_fn) for one step of the controlnet stage, as run/train_controlnet.py."""
    cfg = load_run_config(config_path(config))
    cfg.unet = replace(cfg.unet, gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    ldm = LatentDiffusion(cfg).eval().requires_grad_(False)
    net = ControlNet(ldm.unet, cfg.controlnet, cfg.vae.downsample_factor).train()
    size = cfg.data.preprocess.size
    latent = size // cfg.vae.downsample_factor
    x, noise = (torch.randn(batch, cfg.unet.in_channels, latent, latent) for _ in range(2))
    t = torch.randint(0, 1000, (batch,))
    channels = control_channels(cfg.controlnet.control, cfg.controlnet.frames)
    control = (torch.rand(batch, channels, size, size) > 0.5).float()
    tokens = Tokenizer().encode(["Female, age in 40s, normal BMI, heart failure"] * batch, cfg.text.context_length)

    def loss_fn() -> torch.Tensor:
        with torch.no_grad():
            context = ldm.text(tokens)[0]
        down, mid = net(x, t, context, control)
        return F.mse_loss(ldm.unet(x, t, context, down, mid).float(), noise)

    return cfg, ldm, net, loss_fn


def saved_bytes(loss_fn, params: list[torch.nn.Parameter], precision: str) -> tuple[int, int]:
    """(activation bytes, autocast weight-copy bytes) autograd keeps after one forward; each storage once.

    Parameters themselves are excluded; a saved low-precision tensor shaped like a parameter is a weight copy.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    param_shapes = {tuple(p.shape) for p in params}
    storages: dict[int, tuple[int, bool]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            is_copy = tensor.dtype != torch.float32 and tuple(tensor.shape) in param_shapes
            storages[storage.data_ptr()] = (storage.nbytes(), is_copy)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_context(precision, torch.device("cpu")):
        loss = loss_fn()
    del loss
    return (sum(n for n, copy in storages.values() if not copy), sum(n for n, copy in storages.values() if copy))


def nbytes(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()
               if trainable is None or p.requires_grad == trainable)


def estimate(config: str, batch: int, checkpointing: bool, precision: str) -> dict:
    """MiB per component; the weights stay fp32 under bf16 autocast (ddpm.trainer), so only activations shrink."""
    cfg, ldm, net, loss_fn = build(config, batch, checkpointing)
    activations, weight_copies = saved_bytes(loss_fn, list(ldm.parameters()) + list(net.parameters()), precision)
    trainable = nbytes(net)
    parts = {"frozen_ldm_weights": nbytes(ldm), "controlnet_weights": trainable, "controlnet_grads": trainable,
             "adamw_states": 2 * trainable, "ema_copy": trainable, "activations": activations,
             "autocast_weight_copies": weight_copies}
    out = {k: round(v / MIB, 1) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / MIB, 1)
    # what training steps add on top of the built models: saved tensors, grads, AdamW states (EMA not run here)
    growth = activations + weight_copies + parts["controlnet_grads"] + parts["adamw_states"]
    out["step_growth"] = round(growth / MIB, 1)
    return out


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def measure(config: str, batch: int, checkpointing: bool) -> dict:
    """Run in a fresh process: peak RSS growth over two fp32 CPU training steps (zero_grad, forward, backward,
    AdamW), as ddpm.trainer does them; from the second step on the AdamW states are resident during backward."""
    _, _, net, loss_fn = build(config, batch, checkpointing)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    before, peak_before = rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peaks = []
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"rss_before_step": round(before, 1), "peak_rss_before_step": round(peak_before, 1),
            "peak_rss_step1": round(peaks[0], 1), "peak_rss_step2": round(peaks[1], 1),
            "step_growth": round(peaks[1] - before, 1),
            "peak_set_by_steps": peaks[1] > peak_before}  # else the growth is only a lower bound


def measure_in_subprocess(config: str, batch: int, checkpointing: bool) -> dict:
    cmd = [sys.executable, "-m", "bench.memory", "--config", config, "--batch", str(batch), "--child"]
    cmd += ["--checkpointing"] if checkpointing else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.batch, args.checkpointing)))
        return
    configured = load_run_config(config_path(args.config)).unet.gradient_checkpointing
    result = {"config": args.config, "batch": args.batch, "configured_checkpointing": configured, "runs": []}
    variants = sorted({configured, False}, reverse=True)
    # children first: Linux carries the parent's ru_maxrss into a forked child, so the parent must still be small
    measured = {c: measure_in_subprocess(args.config, args.batch, c) for c in variants}
    for checkpointing in variants:
        run = {"checkpointing": checkpointing, "measured_cpu_fp32": measured[checkpointing],
               "estimate_fp32": estimate(args.config, args.batch, checkpointing, "fp32"),
               "estimate_bf16_autocast": estimate(args.config, args.batch, checkpointing, "bf16")}
        result["runs"].append(run)
        print(json.dumps(run, indent=1), flush=True)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
