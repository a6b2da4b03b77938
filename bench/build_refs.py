"""Reference models (diffusers, MONAI) built with the same architecture as ours, and their parameter counts.

`python -m bench.build_refs --config tiny|paper` prints ours vs each reference side by side. Architectural
differences that no constructor argument removes are listed in PARAM_NOTES and in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from controlnet.model import ControlNet, ControlNetConfig
from ddpm.blocks import ResBlock, SpatialSelfAttention, group_norm
from run.config import load_run_config
from ddpm.unet import UNet, UNetConfig
from ddpm.vae import AutoencoderKL, VAEConfig
from geometry.encodings import control_channels

PARAM_NOTES = {
    "monai_unet": "MONAI ResnetBlock adds the time embedding (Linear(emb, C)); ours and diffusers scale-shift "
                  "(Linear(emb, 2C)): no MONAI option for scale-shift.",
    "monai_controlnet": "same ResnetBlock difference as monai_unet (encoder + middle only).",
    "monai_vae": "MONAI AutoencoderKL adds quant_conv_mu/log_sigma + post_quant_conv (1x1) and q/k/v biases in the "
                 "mid attention; its encoder conv_out emits C latents (not 2C).",
    "diffusers_vae": "diffusers' VAE attention has q/k/v biases; quant convs switched off (ours has none).",
}


@dataclass
class BenchSetup:
    """Everything the bench builds for one config.  latent: (B, unet.in, latent_size, latent_size)."""
    name: str
    unet: UNetConfig
    controlnet: ControlNetConfig
    vae: VAEConfig
    image_size: int
    context_len: int

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsample_factor

    @property
    def control_channels(self) -> int:
        return control_channels(self.controlnet.control, self.controlnet.frames)


def config_path(name: str) -> str:
    return str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")


def load_setup(name: str) -> BenchSetup:
    """configs/<name>.yaml with gradient checkpointing off (the bench times raw compute on both sides)."""
    cfg = load_run_config(config_path(name))
    unet = replace(cfg.unet, gradient_checkpointing=False)
    return BenchSetup(name, unet, cfg.controlnet, cfg.vae, cfg.data.preprocess.size, cfg.text.context_length)


def widths(cfg: UNetConfig) -> tuple[int, ...]:
    return tuple(cfg.base_channels * m for m in cfg.channel_mult)


def hint_widths(setup: BenchSetup) -> tuple[int, ...]:
    """Our HintEncoder's channel after each of its log2(f)+1 stages, as the references' list."""
    hidden, n = setup.controlnet.hint_channels, setup.vae.downsample_factor.bit_length()
    return tuple(hidden[min(i, len(hidden) - 1)] for i in range(n))


def ref_groups(chans: tuple[int, ...]) -> int:
    """A group count every width divides, for the constructors; match_group_norms then sets ours per layer."""
    return min(group_norm(c).num_groups for c in chans)


def match_group_norms(model: nn.Module) -> nn.Module:
    """Give every GroupNorm our group count for its width (we keep >= 4 channels per group at narrow widths).

    Same parameters, same computation as ours; the references only take one global group count.
    """
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.num_groups = group_norm(m.num_channels).num_groups
    return model


# ---- ours ---------------------------------------------------------------------------------------------------

def ours_unet(setup: BenchSetup) -> UNet:
    return UNet(setup.unet)


def ours_controlnet(setup: BenchSetup, unet: UNet) -> ControlNet:
    return ControlNet(unet, setup.controlnet, setup.vae.downsample_factor)


def ours_vae(setup: BenchSetup) -> AutoencoderKL:
    return AutoencoderKL(setup.vae)


# ---- diffusers ----------------------------------------------------------------------------------------------

def _diffusers_blocks(cfg: UNetConfig) -> dict:
    a = cfg.attention_levels
    return dict(
        down_block_types=tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in a),
        block_out_channels=widths(cfg), layers_per_block=cfg.num_res_blocks, norm_num_groups=ref_groups(widths(cfg)),
        norm_eps=1e-6,
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.num_heads,  # diffusers' legacy name: this IS the number of heads
        use_linear_projection=True, resnet_time_scale_shift="scale_shift", flip_sin_to_cos=True, freq_shift=0)


def diffusers_unet(setup: BenchSetup) -> nn.Module:
    from diffusers import UNet2DConditionModel
    cfg = setup.unet
    up = tuple("CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(cfg.attention_levels))
    model = UNet2DConditionModel(sample_size=setup.latent_size, in_channels=cfg.in_channels,
                                 out_channels=cfg.out_channels, up_block_types=up, **_diffusers_blocks(cfg))
    return match_group_norms(model)


def diffusers_controlnet(setup: BenchSetup) -> nn.Module:
    from diffusers import ControlNetModel
    cfg = setup.unet
    model = ControlNetModel(in_channels=cfg.in_channels, conditioning_channels=setup.control_channels,
                            conditioning_embedding_out_channels=hint_widths(setup), **_diffusers_blocks(cfg))
    return match_group_norms(model)


def diffusers_vae(setup: BenchSetup) -> nn.Module:
    from diffusers import AutoencoderKL as DiffusersVAE
    v = setup.vae
    n = len(v.channel_mult)
    model = DiffusersVAE(in_channels=v.in_channels, out_channels=v.in_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(v.base_channels * m for m in v.channel_mult),
                         layers_per_block=v.num_res_blocks, latent_channels=v.latent_channels,
                         norm_num_groups=ref_groups(tuple(v.base_channels * m for m in v.channel_mult)),
                         sample_size=setup.image_size, use_quant_conv=False, use_post_quant_conv=False,
                         mid_block_add_attention=v.attention_in_mid)
    return match_group_norms(model)


# ---- MONAI --------------------------------------------------------------------------------------------------

def _monai_blocks(cfg: UNetConfig) -> dict:
    return dict(spatial_dims=2, in_channels=cfg.in_channels, num_res_blocks=cfg.num_res_blocks,
                channels=widths(cfg), attention_levels=cfg.attention_levels, norm_num_groups=ref_groups(widths(cfg)),
                norm_eps=1e-6,
                num_head_channels=tuple(w // cfg.num_heads for w in widths(cfg)), with_conditioning=True,
                cross_attention_dim=cfg.context_dim, transformer_num_layers=1,
                use_flash_attention=True)  # = F.scaled_dot_product_attention, as ours (default: einsum math)


def monai_unet(setup: BenchSetup) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet
    return match_group_norms(DiffusionModelUNet(out_channels=setup.unet.out_channels, **_monai_blocks(setup.unet)))


def monai_controlnet(setup: BenchSetup) -> nn.Module:
    from monai.networks.nets import ControlNet as MonaiControlNet
    return match_group_norms(MonaiControlNet(conditioning_embedding_in_channels=setup.control_channels,
                                             conditioning_embedding_num_channels=hint_widths(setup),
                                             **_monai_blocks(setup.unet)))


def monai_vae(setup: BenchSetup) -> nn.Module:
    """MONAI AutoencoderKL; its decoder is rebuilt with num_res_blocks + 1 per level, as ours and LDM's."""
    from monai.networks.nets import AutoencoderKL as MonaiVAE
    from monai.networks.nets.autoencoderkl import Decoder
    v = setup.vae
    n = len(v.channel_mult)
    chans = tuple(v.base_channels * m for m in v.channel_mult)
    common = dict(spatial_dims=2, channels=chans, norm_num_groups=ref_groups(chans), norm_eps=1e-6,
                  attention_levels=(False,) * n,
                  use_flash_attention=True)
    model = MonaiVAE(in_channels=v.in_channels, out_channels=v.in_channels, num_res_blocks=v.num_res_blocks,
                     latent_channels=v.latent_channels, with_encoder_nonlocal_attn=v.attention_in_mid,
                     with_decoder_nonlocal_attn=v.attention_in_mid, **common)
    model.decoder = Decoder(in_channels=v.latent_channels, out_channels=v.in_channels,
                            num_res_blocks=(v.num_res_blocks + 1,) * n, with_nonlocal_attn=v.attention_in_mid,
                            **common)
    return match_group_norms(model)


# ---- counts -------------------------------------------------------------------------------------------------

def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_gap(model_name: str, impl: str, ours: nn.Module) -> int:
    """Reference params minus ours that PARAM_NOTES accounts for (0 where the architectures agree)."""
    if impl == "monai" and model_name in ("unet", "controlnet"):  # Linear(emb, C) instead of Linear(emb, 2C)
        return -sum(m.emb_proj.out_features // 2 * (m.emb_proj.in_features + 1)
                    for m in ours.modules() if isinstance(m, ResBlock) and m.emb_proj is not None)
    if model_name == "vae" and impl != "ours":
        gap = sum(3 * m.attn.to_q.out_features for m in ours.modules() if isinstance(m, SpatialSelfAttention))
        if impl == "monai":  # three 1x1 quant convs; encoder conv_out emits latent, not 2 * latent, channels
            lat, conv = ours.cfg.latent_channels, ours.encoder.out[-1]
            gap += 3 * (lat * lat + lat) - (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + 1) * lat
        return gap
    return 0


def param_table(setup: BenchSetup) -> list[dict]:
    """One row per (model, implementation): params, % difference from ours, and the part no note explains."""
    torch.manual_seed(0)
    unet = ours_unet(setup)
    groups = {
        "unet": [("ours", unet), ("diffusers", diffusers_unet(setup)), ("monai", monai_unet(setup))],
        "controlnet": [("ours", ours_controlnet(setup, unet)), ("diffusers", diffusers_controlnet(setup)),
                       ("monai", monai_controlnet(setup))],
        "vae": [("ours", ours_vae(setup)), ("diffusers", diffusers_vae(setup)), ("monai", monai_vae(setup))],
    }
    rows = []
    for model_name, impls in groups.items():
        ours = n_params(impls[0][1])
        for impl, model in impls:
            n = n_params(model)
            rows.append({"model": model_name, "impl": impl, "params": n, "diff_pct": 100.0 * (n - ours) / ours,
                         "unexplained": n - ours - expected_gap(model_name, impl, impls[0][1]),
                         "note": PARAM_NOTES.get(f"{impl}_{model_name}", "")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=("tiny", "paper"))
    args = parser.parse_args()
    setup = load_setup(args.config)
    print(f"config {setup.name}: image {setup.image_size}, latent {setup.latent_size}, "
          f"UNet widths {widths(setup.unet)}, heads {setup.unet.num_heads}, context {setup.unet.context_dim}")
    print(f"{'model':<11}{'impl':<11}{'params':>13}{'vs ours':>10}{'unexplained':>12}  note")
    for r in param_table(setup):
        print(f"{r['model']:<11}{r['impl']:<11}{r['params']:>13,}{r['diff_pct']:>+9.2f}%{r['unexplained']:>12}"
              f"  {r['note']}")


if __name__ == "__main__":
    main()
