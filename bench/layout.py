"""Memory layout experiment: our VAE / UNet fed NCHW (as now) vs channels_last inputs, beside the references.

python -m bench.layout --config tiny --batch 16 --threads 1 --out bench/layout-tiny.json
Feeding channels_last input is what the proposed one-line change in ddpm/vae.py would do inside the model.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench import build_refs as refs
from bench import cases
from bench.run import atomic_write_json
from bench.timing import machine, median, time_interleaved

CL = torch.channels_last


def layouts(model_out: torch.Tensor) -> str:
    return "channels_last" if not model_out.is_contiguous() and model_out.is_contiguous(memory_format=CL) else "NCHW"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=("tiny", "paper"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup, b = refs.load_setup(args.config), args.batch
    g = torch.Generator().manual_seed(0)
    z = torch.randn((b, setup.vae.latent_channels, setup.latent_size, setup.latent_size), generator=g)
    x = torch.rand((b, setup.vae.in_channels, setup.image_size, setup.image_size), generator=g)
    vaes = cases._vaes(setup)
    unet = refs.ours_unet(setup).eval()
    inp = cases.make_inputs(setup, b)
    x2, t2, c2 = torch.cat([inp.x, inp.x]), torch.cat([inp.t, inp.t]), torch.cat([inp.context, inp.context])
    fns = {"decode ours NCHW": lambda: vaes["ours"][1](z),
           "decode ours channels_last": lambda: vaes["ours"][1](z.contiguous(memory_format=CL)),
           "decode diffusers": lambda: vaes["diffusers"][1](z), "decode monai": lambda: vaes["monai"][1](z),
           "encode ours NCHW": lambda: vaes["ours"][0](x),
           "encode ours channels_last": lambda: vaes["ours"][0](x.contiguous(memory_format=CL)),
           "encode diffusers": lambda: vaes["diffusers"][0](x), "encode monai": lambda: vaes["monai"][0](x),
           "unet call (2B) ours NCHW": lambda: unet(x2, t2, c2),
           "unet call (2B) ours channels_last": lambda: unet(x2.contiguous(memory_format=CL), t2, c2)}
    fns = {name: torch.no_grad()(fn) for name, fn in fns.items()}
    out_layout = {name: layouts(fn()) for name, fn in fns.items() if name.startswith("decode")}
    samples, stats = time_interleaved(fns, args.repeats)
    result = {"config": args.config, "batch": b, "machine": machine(), "decoder_output_layout": out_layout,
              "median_s": {n: median(s) for n, s in samples.items()}, "samples_s": samples, **stats}
    for name, seconds in result["median_s"].items():
        print(f"{name:36s} {seconds * 1e3:9.1f} ms")
    print("decoder output layout:", out_layout)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
