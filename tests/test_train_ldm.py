import pytest
"""The LDM stage with a frozen pretrained text tower (a fake open_clip package: the real one needs CUDA builds)."""
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file

import train
from ddpm.checkpoint import load_checkpoint, model_state
from run.pipeline import load_pipeline
from run.train_ldm import PromptContexts
from ddpm.trainer import StepDraws
from ddpm.text_encoder import TextEncoder, TextEncoderConfig
from tests.test_text_encoder import FakeClip

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


def _fake_open_clip(monkeypatch):
    fake = types.ModuleType("open_clip")
    fake.create_model = lambda name, pretrained=None: FakeClip()
    # A deterministic toy tokenizer: <sot>-like id, one id per word, <eot> = the max id 49, padding 0.
    fake.get_tokenizer = lambda name: lambda texts: torch.tensor(
        [([1] + [2 + len(w) % 40 for w in t.split()][:5] + [49] + [0] * 7)[:8] for t in texts])
    monkeypatch.setitem(sys.modules, "open_clip", fake)


@pytest.mark.slow
def test_frozen_clip_tower_trains_unet_against_cached_embeddings_with_periodic_grids(tmp_path, monkeypatch):
    _fake_open_clip(monkeypatch)
    torch.manual_seed(0)
    weights = tmp_path / "clip.pt"
    torch.save(FakeClip().state_dict(), weights)
    argv = ["--config", SMOKE, "--runs", str(tmp_path / "runs"), "--stage", "ldm", "--clip-model", "fake",
            "--clip-weights", str(weights), "text.context_length=8", "ldm_train.sample_every=3"]
    assert train.main(argv) == 0
    run = tmp_path / "runs" / "smoke"
    assert (run / "ldm" / "samples-step0000003.png").is_file() and (run / "ldm_samples.png").is_file()  # periodic grid
    states, meta = load_checkpoint(run / "ldm.safetensors", expect_stage="ldm")
    trained = model_state(states, "model")
    loaded = torch.load(weights)
    tower_keys = [k for k in trained if k.startswith("text.tower.")]
    assert tower_keys  # the frozen tower is exactly the loaded file
    for key in tower_keys:
        assert torch.equal(trained[key], loaded[key.removeprefix("text.tower.")]), key
    pipe = load_pipeline(run / "vae.safetensors", run / "ldm.safetensors")
    images = pipe.generate(["Female, age in 40s, normal BMI, healthy"], steps=2)
    assert images.shape == (1, 2, 32, 32)


def test_prompt_contexts_frozen_cache_equals_running_the_encoder():
    torch.manual_seed(0)
    text = TextEncoder(TextEncoderConfig(width=16, layers=1, heads=2))
    prompts = ["Female, age in 40s, normal BMI, healthy", "Male, age in 70s, obese BMI, heart failure"] * 3
    idx = torch.tensor([5, 0, 3])
    live = PromptContexts(text, prompts, p=0.5)(idx, StepDraws(torch.Generator().manual_seed(1), 3))
    text.requires_grad_(False)
    cached = PromptContexts(text, prompts, p=0.5)(idx, StepDraws(torch.Generator().manual_seed(1), 3))
    assert torch.allclose(live, cached, atol=1e-6)
    dropped = PromptContexts(text, prompts, p=1.0)(idx, StepDraws(torch.Generator().manual_seed(1), 3))
    assert torch.allclose(dropped, text(text.tokenize([""] * 3))[0], atol=1e-6)


@pytest.mark.slow
def test_the_generators_init_does_not_depend_on_a_latents_cache(tmp_path):
    """A fresh run encodes the latents (building a VAE draws random numbers); a rerun reads them from the cache:
    the LDM and ControlNet must come out the same either way."""
    argv = ["--config", SMOKE, "--runs", str(tmp_path), "--stage", "controlnet"]
    assert train.main(argv) == 0
    run = tmp_path / "smoke"
    first = {name: load_file(run / name) for name in ("ldm.safetensors", "controlnet.safetensors")}
    assert any((run / "cache").glob("latents-*.safetensors"))
    assert train.main([*argv, "--force", "ldm", "--force", "controlnet"]) == 0
    for name, tensors in first.items():
        again = load_file(run / name)
        assert tensors.keys() == again.keys()
        for key in tensors:
            assert torch.equal(tensors[key], again[key]), (name, key)
