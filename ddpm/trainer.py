"""The one training loop shared by every stage (VAE, LDM, ControlNet).

Everything random in a step (batch order, noise, dropout) is a function of (seed, step), so `--resume`
from a checkpoint continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

import json
import math
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from data.errors import InputError
from data.atomic import atomic_write_bytes
from data.fields import bounded, check_fields
from ddpm.checkpoint import first_non_finite, load_checkpoint, model_state, optimizer_state, save_checkpoint
from ddpm.distributed import barrier, mean_over_ranks, ranks, wrap_for_ranks
from ddpm.ema import EMA


LR_SCHEDULES = ("constant", "cosine")
SEED_LIMIT = 2 ** 32  # training seeds are scaled by ~10^6 per step before reaching torch.manual_seed (< 2^64)


@dataclass
class TrainConfig:
    steps: int = bounded(1000, lo=1)
    batch_size: int = bounded(16, lo=1)
    lr: float = bounded(2e-4, lo=0, lo_open=True)
    weight_decay: float = bounded(0.0, lo=0)
    warmup_steps: int = bounded(50, lo=0)
    lr_schedule: str = "constant"  # after warm-up: "constant" (the method's) or "cosine" (to 0 at `steps`)
    grad_clip: float = bounded(1.0, lo=0)  # 0: no clipping
    ema_decay: float = bounded(0.999, lo=0, hi=1, hi_open=True)
    checkpoint_every: int = bounded(250, lo=1)
    keep_last: int = bounded(2, lo=1)  # >= 1 so a good checkpoint always exists
    log_every: int = bounded(25, lo=1)
    sample_every: int = bounded(0, lo=0)  # 0: grids only at the end
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; weights stay fp32)
    compile: bool = False  # torch.compile the stage's networks (same results to float tolerance)
    seed: int = bounded(0, lo=0, hi=SEED_LIMIT, hi_open=True)

    def __post_init__(self) -> None:
        check_fields(self, "train")
        if self.precision not in ("fp32", "bf16"):
            raise InputError("train.precision", f"expected 'fp32' or 'bf16', got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError("train.lr_schedule",
                             f"expected one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the last good checkpoint."""


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at `step`: epochs are seeded permutations, so order depends only on (seed, step)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in positions.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        chosen = positions.div(n, rounding_mode="floor") == epoch
        out[chosen] = perm[positions[chosen] % n]
    return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """Per-step generator for noise and timesteps."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


class StepDraws:
    """The random draws of one step, made for the whole global batch; a process keeps its own rows of each.

    So N processes draw exactly what one process would at the same global batch. Draws are on the CPU
    (same numbers on any device); shape[0] is this process's share of the batch.
    """

    def __init__(self, generator: torch.Generator, global_batch: int, rows: Optional[slice] = None) -> None:
        self.generator, self.global_batch = generator, global_batch
        self.rows = rows if rows is not None else slice(0, global_batch)

    def _full(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape[0] != self.rows.stop - self.rows.start:
            raise ValueError(f"draw of {shape[0]} rows, but this process holds rows {self.rows} of the batch")
        return (self.global_batch, *shape[1:])

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(self._full(tuple(shape)), generator=self.generator)[self.rows]

    def rand(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(self._full(tuple(shape)), generator=self.generator)[self.rows]

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, self._full(tuple(shape)), generator=self.generator)[self.rows]


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the fused kernel (one launch for all tensors; CPU from torch 2.4) where this torch has it."""
    fused_ok = all(p.is_cuda for p in params) or tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_ok or None)


def autocast_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant (the method's) or a half cosine from lr at the warm-up's end to 0 at cfg.steps
    (Loshchilov & Hutter 2017): a function of the step alone, so a resumed run continues the same curve."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_schedule == "constant" or step < cfg.warmup_steps:
        return cfg.lr * warm
    done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def checkpoint_paths(run_dir: Path, stage: str) -> list[Path]:
    """Step checkpoints, oldest first; temp files of killed writes ('.<name>.*.tmp') and stray names never match."""
    pattern = re.compile(rf"{re.escape(stage)}-step(\d+)\.safetensors")
    found = [(int(m.group(1)), p) for p in run_dir.glob(f"{stage}-step*.safetensors")
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def metrics_until(path: Path, step: int) -> bytes:
    """The metrics log's records up to `step` (a resumed run replays later steps; a half-written line is dropped)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return "".join(kept).encode()


def latest_checkpoint(run_dir: Path, stage: str) -> Optional[Path]:
    paths = checkpoint_paths(run_dir, stage)
    return paths[-1] if paths else None


def train_loop(
    *,
    stage: str,
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, StepDraws, int], tuple[torch.Tensor, dict]],
    num_samples: int,
    cfg: TrainConfig,
    run_dir: Path,
    meta: dict,
    resume: bool = False,
    on_checkpoint: Optional[Callable[[int, nn.Module], None]] = None,
    device: torch.device = torch.device("cpu"),
    compile_modules: tuple[nn.Module, ...] = (),
    find_unused: bool = False,
) -> tuple[EMA, Path]:
    """Train the trainable parameters of `model` with AdamW; returns (EMA, final checkpoint path).

    loss_fn(batch_indices (b,), draws, step) -> (scalar loss, logs), b = this process's share of the global
    batch cfg.batch_size (all of it without torchrun). The final checkpoint is `<run_dir>/<stage>-final.safetensors`;
    intermediate ones are kept last-N for resume. Under torchrun only rank 0 writes; gradients are averaged by DDP.
    compile_modules: compiled in place when cfg.compile; find_unused: some parameters skip some steps (DDP must know).
    """
    dp = ranks()
    rows = dp.rows(cfg.batch_size)
    if dp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    ema = EMA(model, cfg.ema_decay)
    start = 0
    last_good: Optional[Path] = latest_checkpoint(run_dir, stage) if resume else None
    if last_good is not None:
        states, saved = load_checkpoint(last_good, expect_stage=stage)
        try:
            model.load_state_dict(model_state(states, "model"))
            ema.load_state_dict(model_state(states, "ema"))
            optimizer.load_state_dict(optimizer_state(states))
        except (RuntimeError, ValueError, KeyError) as err:  # e.g. written by a model of another config
            detail = " ".join(str(err).split())[:200]
            raise InputError(last_good, f"cannot resume: the checkpoint does not fit this model (another config?): "
                                        f"{detail} ...; train without resume or use another run name") from None
        start = int(saved["step"])
    metrics_path = run_dir / f"{stage}-metrics.jsonl"
    if dp.is_main:
        if start == 0 and metrics_path.exists():
            metrics_path.unlink()
        elif metrics_path.exists():
            atomic_write_bytes(metrics_path, metrics_until(metrics_path, start))
        for stale in run_dir.glob(f".{stage}-step*.tmp"):  # half-written checkpoints of a killed run: never read
            stale.unlink(missing_ok=True)
    barrier()  # every rank has read the checkpoint before rank 0 writes new ones

    def save(step: int) -> Path:
        path = run_dir / f"{stage}-step{step:07d}.safetensors"
        if not dp.is_main:
            return path
        for group, state in (("model", model.state_dict()), ("ema", ema.state_dict())):
            if (bad := first_non_finite(state)) is not None:  # never save a broken model as the newest checkpoint
                raise NonFiniteLoss(f"{stage}: non-finite {group} weight {bad} at step {step} (not saved); "
                                    f"last good checkpoint: {last_good or 'none (no checkpoint written yet)'}")
        save_checkpoint(path, {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()},
                        {**meta, "stage": stage, "step": step, **({"resumed_from": start} if start else {})})
        for old in checkpoint_paths(run_dir, stage)[:-cfg.keep_last]:
            old.unlink(missing_ok=True)  # the newest (just written) is never among these
        return path

    if cfg.compile:
        for module in compile_modules:
            module.compile()  # in place: state_dict keys stay as they are
    step_loss = wrap_for_ranks(model, loss_fn, device, find_unused)
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=stage, dynamic_ncols=True,
               mininterval=1.0, disable=not dp.is_main)
    tic = time.perf_counter()
    with open(metrics_path, "a") if dp.is_main else nullcontext() as log:
        for step in bar:
            torch.manual_seed(cfg.seed * 7919 + step + 104_729 * dp.rank)  # dropout: other masks on other ranks
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = batch_indices(num_samples, cfg.batch_size, cfg.seed, step)[rows]
            with autocast_context(cfg.precision, device):
                loss, logs = step_loss(idx, StepDraws(step_generator(cfg.seed, step), cfg.batch_size, rows), step)
            global_loss = mean_over_ranks(loss)  # every rank sees the same value, so all stop together
            if not torch.isfinite(global_loss):
                raise NonFiniteLoss(f"{stage}: non-finite loss {global_loss.item()} at step {step}; "
                                    f"last good checkpoint: {last_good or 'none (no checkpoint written yet)'}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if not torch.isfinite(grad_norm):
                raise NonFiniteLoss(f"{stage}: non-finite gradient norm at step {step}; last good checkpoint: {last_good or 'none'}")
            optimizer.step()
            ema.update(model, step)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                values = torch.tensor([float(v) for v in logs.values()], device=global_loss.device)  # NCCL: on device
                parts = mean_over_ranks(values).tolist()  # every rank joins this collective
                if log is not None:
                    record = {**dict(zip(logs, parts)), "step": done, "loss": global_loss.item(),
                              "grad_norm": grad_norm.item(), "lr": lr_at(step, cfg),
                              "sec": round(time.perf_counter() - tic, 2)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{global_loss.item():.4f}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                last_good = save(done)
            if on_checkpoint is not None and dp.is_main and cfg.sample_every and done % cfg.sample_every == 0 \
                    and done != cfg.steps:
                on_checkpoint(done, model)
    final = run_dir / f"{stage}-final.safetensors"
    if dp.is_main:
        if last_good is None:  # resumed at the end: nothing left to train
            last_good = latest_checkpoint(run_dir, stage)
        atomic_write_bytes(final, last_good.read_bytes())
    barrier()
    return ema, final
