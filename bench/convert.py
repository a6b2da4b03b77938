"""Our UNet / ControlNet state dicts under diffusers' parameter names.

Loading them into the diffusers models of bench.build_refs (strict) and getting the same outputs proves the
bench times the same computation on both sides (tests/test_bench_equivalence.py does exactly that).
"""
from __future__ import annotations

from torch import Tensor

from ddpm.unet import UNetConfig

# renames inside one block: ours -> diffusers
_INNER = ((".emb_proj.", ".time_emb_proj."), (".skip.", ".conv_shortcut."), (".block.", ".transformer_blocks.0."),
          (".to_out.", ".to_out.0."), (".ff.0.proj.", ".ff.net.0.proj."), (".ff.2.", ".ff.net.2."))


def _encoder_prefixes(cfg: UNetConfig) -> dict[str, str]:
    """Our block paths of time embedding, conv_in, down path and middle -> diffusers' block paths."""
    m = {"time_embed.mlp.0": "time_embedding.linear_1", "time_embed.mlp.2": "time_embedding.linear_2",
         "conv_in": "conv_in", "mid_block.0": "mid_block.resnets.0", "mid_block.1": "mid_block.attentions.0",
         "mid_block.2": "mid_block.resnets.1"}
    last, i = len(cfg.channel_mult) - 1, 0
    for level, attends in enumerate(cfg.attention_levels):
        for j in range(cfg.num_res_blocks):
            m[f"down_blocks.{i}.0"] = f"down_blocks.{level}.resnets.{j}"
            if attends:
                m[f"down_blocks.{i}.1"] = f"down_blocks.{level}.attentions.{j}"
            i += 1
        if level != last:
            m[f"down_blocks.{i}.0"] = f"down_blocks.{level}.downsamplers.0"
            i += 1
    return m


def _unet_prefixes(cfg: UNetConfig) -> dict[str, str]:
    m = _encoder_prefixes(cfg)
    m.update({"out.0": "conv_norm_out", "out.2": "conv_out"})
    i = 0
    for k, level in enumerate(reversed(range(len(cfg.channel_mult)))):
        attends = cfg.attention_levels[level]
        for j in range(cfg.num_res_blocks + 1):
            m[f"up_blocks.{i}.0"] = f"up_blocks.{k}.resnets.{j}"
            if attends:
                m[f"up_blocks.{i}.1"] = f"up_blocks.{k}.attentions.{j}"
            if level != 0 and j == cfg.num_res_blocks:
                m[f"up_blocks.{i}.{2 if attends else 1}"] = f"up_blocks.{k}.upsamplers.0"
            i += 1
    return m


def _rename(state: dict[str, Tensor], prefixes: dict[str, str]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        block = max((p for p in prefixes if key.startswith(p + ".")), key=len)  # longest matching block path
        rest = key[len(block):]
        for old, new in _INNER:
            rest = rest.replace(old, new)
        out[prefixes[block] + rest] = value
    return out


def unet_to_diffusers(state: dict[str, Tensor], cfg: UNetConfig) -> dict[str, Tensor]:
    """UNet.state_dict() -> UNet2DConditionModel.state_dict() names."""
    return _rename(state, _unet_prefixes(cfg))


def controlnet_to_diffusers(state: dict[str, Tensor], cfg: UNetConfig) -> dict[str, Tensor]:
    """ControlNet.state_dict() -> ControlNetModel.state_dict() names."""
    prefixes = {f"copy.{k}": v for k, v in _encoder_prefixes(cfg).items()}
    prefixes["mid_zero_conv"] = "controlnet_mid_block"
    hint_convs = sorted({int(k.split(".")[2]) for k in state if k.startswith("hint.net.")})  # Conv2d indices
    prefixes[f"hint.net.{hint_convs[0]}"] = "controlnet_cond_embedding.conv_in"
    prefixes[f"hint.net.{hint_convs[-1]}"] = "controlnet_cond_embedding.conv_out"
    for j, idx in enumerate(hint_convs[1:-1]):
        prefixes[f"hint.net.{idx}"] = f"controlnet_cond_embedding.blocks.{j}"
    for i in {int(k.split(".")[1]) for k in state if k.startswith("zero_convs.")}:
        prefixes[f"zero_convs.{i}"] = f"controlnet_down_blocks.{i}"
    return _rename(state, prefixes)
