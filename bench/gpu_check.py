"""The GPU check of issue 16, one command: bf16 autocast vs fp32 training steps (VAE / LDM / ControlNet, same init
and batch), which SDPA kernel runs, peak memory and the largest batch under 12 / 24 GB, sampling images/s, and
our UNet / ControlNet step time vs diffusers at equal architecture.

    python3 bench/gpu_check.py --out DIR                          # CUDA, configs/paper.yaml, ~2 min on one H100
    python3 bench/gpu_check.py --device cpu --tiny --out DIR      # reduced form on the CPU (tests/test_gpu_check.py)

Writes DIR/gpu_check.json (every number) and DIR/gpu_check.md (the tables, also printed). Models are randomly
initialised (seed 0) and fed random batches: speed, memory and bf16-vs-fp32 parity do not need trained weights.
Needs no data. Imports what the project imports (through run.config: nibabel, fairlearn + narwhals beside
torch, numpy, pandas, scipy, scikit-learn, safetensors, pyyaml, tqdm, Pillow); diffusers (+ importlib-metadata,
zipp; huggingface-hub, regex, requests, ... as installed) only for the last table, skipped with a line when it is
not importable. On a machine that already has torch and the scientific stack, carry only the missing wheels:
a carried huggingface-hub newer than the machine's transformers accepts breaks `import diffusers` (seen on the
lent H200: hub 2.4 vs transformers' < 2.0 pin).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.timing import sync, timed  # noqa: E402
from bench.train_stages import (PROMPTS, Stage, _masks, build_stages, parity_and_speed,  # noqa: E402
                                precision_context, train_steps)
from data.atomic import atomic_write_bytes  # noqa: E402
from run.pipeline import Pipeline, generation_kwargs, make_schedule_from  # noqa: E402
from run.config import RunConfig, load_run_config  # noqa: E402

GB = 1e9


# ---- memory ---------------------------------------------------------------------------------------------------

def peak_bytes(stage: Stage, cfg: RunConfig, batch: int, precision: str, device: torch.device) -> float:
    """torch.cuda.max_memory_allocated over two train steps (the second holds the AdamW state); inf on OOM."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step = train_steps(stage, cfg, batch, precision, 2, device)
        step()
        step()
        sync(device)
        peak = float(torch.cuda.max_memory_allocated(device))
    except torch.OutOfMemoryError:
        peak = float("inf")
    stage.module.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return peak


def largest_batch(peak: Callable[[int], float], limits: list[float], start: int, cap: int) -> dict:
    """Try start, 2 start, ... up to cap (stopping past the largest limit). -> {tried: {batch: bytes},
    fits: {limit: largest tried batch under it or None}, estimate: {limit: batch from the line through the two
    largest fitting points (memory is affine in the batch), None when fewer than two fit}}."""
    tried: dict[int, float] = {}
    batch = start
    while batch <= cap:
        tried[batch] = peak(batch)
        if tried[batch] > max(limits):
            break
        batch *= 2
    fits, estimate = {}, {}
    for limit in limits:
        ok = sorted(b for b, p in tried.items() if p <= limit)
        fits[limit] = ok[-1] if ok else None
        estimate[limit] = None
        if len(ok) >= 2 and tried[ok[-1]] > tried[ok[-2]]:
            (b1, p1), (b2, p2) = (ok[-2], tried[ok[-2]]), (ok[-1], tried[ok[-1]])
            estimate[limit] = int(b2 + (limit - p2) * (b2 - b1) / (p2 - p1))
    return {"tried": tried, "fits": fits, "estimate": estimate}


# ---- attention kernels ----------------------------------------------------------------------------------------

def sdpa_ops(fn: Callable[[], object]) -> list[str]:
    """Names of the aten scaled-dot-product kernels one call of fn dispatches to (torch profiler, CPU-side ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "attention" in e.key.lower()}
    return sorted(n for n in names if n.startswith("aten::_"))


def sdpa_backends(stage: Stage, batch: int, device: torch.device, warmup: int, iters: int) -> dict:
    """The LDM UNet forward + backward under bf16 autocast: the kernels the default dispatch runs, then each backend
    forced in turn via torch.nn.attention.sdpa_kernel (ok + step time, or the error when it cannot run). Attention on
    the "fused" backend throughout: the default's CPU math path would bypass torch's dispatch (ddpm/attention.py)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    stage.use_attention("fused")

    def fwd_bwd() -> None:
        with precision_context("bf16", device):
            loss = stage.loss(batch, 0)
        loss.backward()
        stage.module.zero_grad(set_to_none=True)

    fwd_bwd()
    result = {"default_ops": sdpa_ops(fwd_bwd), "forced": {}}
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if not hasattr(SDPBackend, backend):
            continue
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                times = timed(fwd_bwd, device, warmup, iters)
            result["forced"][backend] = {"ok": True, "step_s": statistics.median(times)}
        except RuntimeError as err:
            result["forced"][backend] = {"ok": False, "error": str(err).splitlines()[0][:160]}
    stage.use_attention("sdpa")
    return result


# ---- sampling -------------------------------------------------------------------------------------------------

def sampling_speed(cfg: RunConfig, stages: dict[str, Stage], batch: int, device: torch.device, warmup: int,
                   iters: int) -> dict:
    """Pipeline.generate (ControlNet, cfg.sample's steps / guidance / spacing) fp32 vs bf16 autocast: images/s and
    how far the bf16 images are from the fp32 ones (same seeds)."""
    vae, control = stages["vae"].module.vae.eval(), stages["controlnet"]
    pipe = Pipeline(cfg, vae, 1.0, control.parent, make_schedule_from(cfg), control.module.eval())
    s = cfg.sample
    prompts = [PROMPTS[i % 2] for i in range(batch)]
    masks = _masks(batch, cfg.data.preprocess.size, 0).numpy()
    out, images = {}, {}
    for precision in ("fp32", "bf16"):
        def call(precision=precision):
            with precision_context(precision, device):
                return pipe.generate(prompts, masks, seed=0, **generation_kwargs(s))
        images[precision] = torch.from_numpy(call())
        times = timed(call, device, max(0, warmup - 1), iters)
        out[precision] = {"images_per_s": batch / statistics.median(times), "samples": times}
    diff = (images["bf16"] - images["fp32"]).abs()
    out.update(batch=batch, steps=s.steps, bf16_speedup=out["bf16"]["images_per_s"] / out["fp32"]["images_per_s"],
               bf16_vs_fp32_max_abs=float(diff.max()), bf16_vs_fp32_mean_abs=float(diff.mean()),
               finite=bool(torch.isfinite(images["bf16"]).all()))
    vae.train()
    control.module.train()
    return out


# ---- ours vs diffusers ----------------------------------------------------------------------------------------

def versus_diffusers(config: str, batch: int, device: torch.device, warmup: int, iters: int) -> dict:
    """UNet and UNet + ControlNet training steps (bench.cases: same weights, inputs, AdamW; gradient
    checkpointing off on both sides), ours vs diffusers, fp32 and bf16 autocast; rounds interleaved."""
    try:
        import diffusers  # noqa: F401
    except ImportError as err:
        return {"skipped": f"diffusers not importable ({err}); install the bench wheels to compare"}
    from bench import build_refs as refs
    from bench.cases import _train_step, make_inputs
    from bench.convert import controlnet_to_diffusers, unet_to_diffusers

    setup = refs.load_setup(config)
    torch.manual_seed(0)
    ours = refs.ours_unet(setup).to(device)
    theirs = refs.diffusers_unet(setup)
    theirs.load_state_dict(unet_to_diffusers(ours.state_dict(), setup.unet))
    theirs.to(device)
    ours_net = refs.ours_controlnet(setup, ours).to(device)
    theirs_net = refs.diffusers_controlnet(setup)
    theirs_net.load_state_dict(controlnet_to_diffusers(ours_net.state_dict(), setup.unet))
    theirs_net.to(device)
    inp = make_inputs(setup, batch)
    x, t, c, noise, ctrl = (v.to(device) for v in (inp.x, inp.t, inp.context, inp.noise, inp.control))
    unet_fwd = {"ours": lambda down=None, mid=None: ours(x, t, c, down, mid),
                "diffusers": lambda down=None, mid=None: theirs(
                    x, t, encoder_hidden_states=c, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample}
    net_fwd = {"ours": lambda: ours_net(x, t, c, ctrl),
               "diffusers": lambda: theirs_net(x, t, encoder_hidden_states=c, controlnet_cond=ctrl, return_dict=False)}
    rows = {}
    for precision in ("fp32", "bf16"):
        for row in ("unet_train", "controlnet_train"):
            fns = {}
            for impl in ("ours", "diffusers"):
                unet, net = (ours, ours_net) if impl == "ours" else (theirs, theirs_net)
                if row == "unet_train":
                    unet.train().requires_grad_(True)
                    params, loss_fn = list(unet.parameters()), lambda impl=impl: F.mse_loss(unet_fwd[impl]().float(), noise)
                else:
                    unet.eval().requires_grad_(False)
                    net.train()

                    def loss_fn(impl=impl):
                        down, mid = net_fwd[impl]()
                        return F.mse_loss(unet_fwd[impl](down, mid).float(), noise)
                    params = list(net.parameters())
                step = _train_step(params, loss_fn)

                def run(step=step, precision=precision):
                    with precision_context(precision, device):
                        return step()
                fns[impl] = run
            samples = {impl: [] for impl in fns}
            for fn in fns.values():
                timed(fn, device, warmup, 0)
            for _ in range(iters):  # interleaved rounds: both sides see the same machine state
                for impl, fn in fns.items():
                    samples[impl] += timed(fn, device, 0, 1)
            med = {impl: statistics.median(v) for impl, v in samples.items()}
            rows[f"{row}_{precision}"] = {"ours_s": med["ours"], "diffusers_s": med["diffusers"],
                                          "speed_ratio": med["diffusers"] / med["ours"], "batch": batch}
    return {"diffusers_version": diffusers.__version__, "rows": rows}


# ---- report ---------------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(), "tf32": False}  # fp32 columns are strict fp32
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / GB, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def markdown(r: dict) -> str:
    e = r["environment"]
    lines = [f"# GPU check: {r['config']} on {e.get('gpu', e['device'])} (torch {e['torch']}, "
             f"{r['wall_s']:.0f} s)", "", f"Command: `{r['command']}`", "",
             f"## bf16 autocast vs fp32 training steps (batch {r['batch']}, same init and batches; fp32 = strict, "
             "TF32 off)", "",
             "| stage | fp32 losses | bf16 losses | max rel. diff | fp32 s/step | bf16 s/step | bf16 speed-up |",
             "|---|---|---|---|---|---|---|"]
    for name, p in r["parity"].items():
        fmt = lambda v: ", ".join(f"{x:.4f}" for x in v)  # noqa: E731
        lines.append(f"| {name} | {fmt(p['fp32']['losses'])} | {fmt(p['bf16']['losses'])} | "
                     f"{p['max_rel_loss_diff']:.2e} | {p['fp32']['step_s']:.4f} | {p['bf16']['step_s']:.4f} | "
                     f"{p['bf16_speedup']:.2f}x |")
    a = r["attention"]
    lines += ["", f"## SDPA (LDM UNet forward + backward, bf16, batch {r['batch']})", "",
              f"Default dispatch ran: {', '.join(a['default_ops']) or 'no SDPA op seen'}", "",
              "| forced backend | runs | s/step |", "|---|---|---|"]
    for name, f in a["forced"].items():
        lines.append(f"| {name} | yes | {f['step_s']:.4f} |" if f["ok"] else f"| {name} | no: {f['error']} | |")
    lines += ["", "## Peak memory (bf16 autocast train step, torch.cuda.max_memory_allocated)", ""]
    if "skipped" in r["memory"]:
        lines.append(r["memory"]["skipped"])
    else:
        limits = r["memory"]["limits_gb"]
        lines += ["| stage | batch 8 GB | " + " | ".join(f"largest batch <= {x:g} GB (tried / affine est.)"
                                                       for x in limits) + " | batches tried (GB) |",
                  "|---|---|" + "---|" * len(limits) + "---|"]
        for name, m in r["memory"]["stages"].items():
            tried = ", ".join(f"{b}: {p / GB:.1f}" for b, p in m["tried"].items())
            fits = " | ".join(f"{m['fits'][str(x)]} / {m['estimate'][str(x)]}" for x in limits)
            lines.append(f"| {name} | {m['batch8_gb']:.2f} | {fits} | {tried} |")
    s = r["sampling"]
    lines += ["", f"## Sampling (ControlNet pipeline, {s['steps']} steps, batch {s['batch']}, CFG)", "",
              "| | fp32 | bf16 autocast |", "|---|---|---|",
              f"| images/s | {s['fp32']['images_per_s']:.2f} | {s['bf16']['images_per_s']:.2f} "
              f"({s['bf16_speedup']:.2f}x) |",
              f"| bf16 - fp32 image difference | | max {s['bf16_vs_fp32_max_abs']:.3f}, mean "
              f"{s['bf16_vs_fp32_mean_abs']:.4f} (images in [-1, 1]; finite: {s['finite']}) |"]
    d = r["diffusers"]
    lines += ["", "## Ours vs diffusers (same weights and inputs, checkpointing off)", ""]
    if "skipped" in d:
        lines.append(d["skipped"])
    else:
        lines += [f"diffusers {d['diffusers_version']}; speed ratio = diffusers / ours (> 1: ours faster)", "",
                  "| row | ours s/step | diffusers s/step | ratio |", "|---|---|---|---|"]
        for name, row in d["rows"].items():
            lines.append(f"| {name} (batch {row['batch']}) | {row['ours_s']:.4f} | {row['diffusers_s']:.4f} | "
                         f"{row['speed_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="configs/smoke.yaml and small batches (the CPU test)")
    p.add_argument("--config", default=None, help="preset name in configs/ (default: paper; smoke with --tiny)")
    p.add_argument("--batch", type=int, default=None, help="train-step batch (default 8; --tiny 2)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: the config's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--sample-iters", type=int, default=3, help="timed sampling calls per precision")
    p.add_argument("--max-batch", type=int, default=256, help="cap of the memory search")
    p.add_argument("--limits-gb", default="12,24")
    args = p.parse_args(argv)
    tic = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here; use --device cpu --tiny", file=sys.stderr)
        return 2
    config = args.config or ("smoke" if args.tiny else "paper")
    cfg = load_run_config(str(ROOT / "configs" / f"{config}.yaml"), ["device=cpu"])
    batch = args.batch or (2 if args.tiny else 8)
    sample_batch = args.sample_batch or (2 if args.tiny else cfg.sample.batch_size)
    warmup, iters = args.warmup, args.iters
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the parity columns
    torch.backends.cudnn.allow_tf32 = False

    stages = build_stages(cfg, device)
    result = {"config": f"configs/{config}.yaml", "command": " ".join(["python3 bench/gpu_check.py", *(argv or sys.argv[1:])]),
              "batch": batch, "environment": environment(device), "parity": {}}
    for name, stage in stages.items():
        print(f"[gpu_check] {name}: fp32 vs bf16 train steps", flush=True)
        result["parity"][name] = parity_and_speed(stage, cfg, batch, device, warmup, iters)
    print("[gpu_check] SDPA backends", flush=True)
    result["attention"] = sdpa_backends(stages["ldm"], batch, device, warmup, iters)
    limits = [float(x) for x in args.limits_gb.split(",")]
    if device.type == "cuda":
        result["memory"] = {"limits_gb": limits, "stages": {}}
        for name, stage in stages.items():
            print(f"[gpu_check] {name}: memory search", flush=True)
            precision = getattr(cfg, f"{name}_train").precision
            m = largest_batch(lambda b: peak_bytes(stage, cfg, b, precision, device), [x * GB for x in limits],
                              8, args.max_batch)
            result["memory"]["stages"][name] = {
                "precision": precision, "batch8_gb": m["tried"].get(8, float("nan")) / GB,
                "tried": m["tried"], "fits": {str(x): m["fits"][x * GB] for x in limits},
                "estimate": {str(x): m["estimate"][x * GB] for x in limits}}
            stage.reset()
    else:
        result["memory"] = {"skipped": "peak memory: CUDA only (torch.cuda.max_memory_allocated); "
                                       "bench/memory.py measures the CPU"}
    print("[gpu_check] sampling", flush=True)
    result["sampling"] = sampling_speed(cfg, stages, sample_batch, device, warmup, args.sample_iters)
    del stages
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print("[gpu_check] ours vs diffusers", flush=True)
    result["diffusers"] = versus_diffusers(config, batch, device, warmup, iters)
    result["wall_s"] = time.perf_counter() - tic
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "gpu_check.json", (json.dumps(result, indent=1) + "\n").encode())
    text = markdown(json.loads(json.dumps(result)))
    atomic_write_bytes(args.out / "gpu_check.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
