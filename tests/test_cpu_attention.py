"""bench/cpu_attention.py on the smoke config: in fp32 the default backend is torch's kernel (nothing changes); in
bf16 it takes the math path and trains to bf16's own noise."""
import json

import pytest

from bench.cpu_attention import main


@pytest.mark.slow
def test_fp32_trains_bit_for_bit_as_torchs_kernel_and_bf16_does_not(tmp_path):
    main(["--config", "smoke", "--rounds", "1", "--out", str(tmp_path / "fp32.json")])
    main(["--config", "smoke", "--rounds", "1", "--out", str(tmp_path / "bf16.json"),
          "vae_train.precision=bf16", "ldm_train.precision=bf16", "controlnet_train.precision=bf16",
          "vae.attention_in_mid=true"])
    fp32, bf16 = (json.loads((tmp_path / f"{p}.json").read_text())["train"] for p in ("fp32", "bf16"))
    for name in ("vae", "ldm", "controlnet"):
        assert fp32[name]["losses_fused"] == fp32[name]["losses_sdpa"] and fp32[name]["update_rel_diff"] == 0.0
        assert fp32[name]["precision"] == "fp32" and bf16[name]["precision"] == "bf16"
        assert 0 < bf16[name]["update_rel_diff"] < 1 and bf16[name]["speedup_median_ratio"] > 0
        assert 0 <= fp32[name]["fused_attention_backward_share"] < 1
    assert fp32["ldm"]["fused_attention_backward_share"] > 0  # the smoke UNet attends at its second level
    calls = json.loads((tmp_path / "fp32.json").read_text())["one_call"]
    assert {(c["lq"], c["lk"], c["dtype"]) for c in calls} >= {(16, 16, "float32"), (16, 16, "bfloat16")}
