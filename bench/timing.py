"""Interleaved wall-clock timing, FLOP counting and the matmul ceiling of this machine."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds of each of `iters` calls after `warmup` untimed ones (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - tic)
    return out


def cpu_stall_seconds() -> float | None:
    """Total time runnable tasks waited for a CPU on this machine (Linux PSI), None where unavailable."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def _timed(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(seconds per call, fraction of the wall time some task waited for a CPU) over `calls` calls."""
    stall, tic = cpu_stall_seconds(), time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - tic
    after = cpu_stall_seconds()
    return wall / calls, (after - stall) / wall if stall is not None and after is not None else 0.0


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_seconds: float = 0.3,
                     long_call: float = 2.0, max_stall: float = 0.1,
                     backoff: float = 5.0) -> tuple[dict[str, list[float]], dict]:
    """Seconds per call of each fn, `repeats` samples each, and how clean they were.

    Each round runs every fn once (order rotated every round) so all sides see the same machine load;
    a sample loops a fn enough times to last >= min_seconds, calibrated from the last warm-up call.
    Warm-up: two calls (oneDNN primitives and allocator caches settle), one when a call exceeds long_call s.
    The machine is shared: a sample during which tasks waited for a CPU more than max_stall of the time
    (another process took a core) is retaken after `backoff` seconds, at most 2 x `repeats` times per fn;
    the stall of each kept sample is returned in stats["stall"].
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(2):
            elapsed, _ = _timed(fn, 1)
            if elapsed > long_call:
                break
        inner[name] = max(1, round(min_seconds / max(elapsed, 1e-6)))
    names = list(fns)
    samples = {name: [] for name in names}
    stats = {"stall": {name: [] for name in names}, "retaken": {name: 0 for name in names}}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, stall = _timed(fns[name], inner[name])
            while stall > max_stall and stats["retaken"][name] < 2 * repeats:
                stats["retaken"][name] += 1
                time.sleep(backoff)  # neighbours' bursts last seconds: retaking at once mostly hits the same one
                seconds, stall = _timed(fns[name], inner[name])
            samples[name].append(seconds)
            stats["stall"][name].append(round(stall, 3))
    return samples, stats


def median(values: list[float]) -> float:
    return statistics.median(values)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply-add = 2) of matmuls, convolutions and attention that fn runs, forward and backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """Sustained float32 torch.matmul rate for (m, k) @ (k, n), in GFLOP/s."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.matmul(a, b)
    calls, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        torch.matmul(a, b)
        calls += 1
    return 2.0 * m * k * n * calls / (time.perf_counter() - tic) / 1e9


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": os.getloadavg()}
