import sys
import types

import pytest
import torch
from torch import nn

from data.attributes import BMI_CATEGORIES, HEALTH_CONDITIONS, SEXES
from data.errors import InputError
from ddpm.text_encoder import (PromptEmbeddingCache, TextEncoder, TextEncoderConfig, load_open_clip_text_tower)
from ddpm.tokenizer import EOT_ID, PAD_ID, SOT_ID, UNK_ID, Tokenizer, eot_positions, split_words

PROMPT = "Female, age in 40s, normal BMI, heart failure"


def every_prompt():
    return [f"{sex.title()}, age in {d}s, {bmi} BMI, {health.replace('_', ' ')}"
            for sex in SEXES for d in range(0, 121, 10) for bmi in BMI_CATEGORIES for health in HEALTH_CONDITIONS]


# ---- tokenizer ---------------------------------------------------------------------------------------

def test_tokenizer_specials_and_round_trip_of_every_prompt():
    tok = Tokenizer()
    assert tok.vocab[:4] == ["<pad>", "<sot>", "<eot>", "<unk>"] and (PAD_ID, SOT_ID, EOT_ID, UNK_ID) == (0, 1, 2, 3)
    prompts = every_prompt()
    tokens = tok.encode(prompts)
    assert tokens.shape == (len(prompts), 16) and tokens.dtype == torch.long
    assert not (tokens == UNK_ID).any()  # the whole prompt vocabulary is covered
    assert tok.decode(tokens) == [p.lower() for p in prompts]


def test_tokenizer_layout_padding_and_empty_prompt():
    tok = Tokenizer()
    words = split_words(PROMPT)
    assert words == ["female", ",", "age", "in", "40s", ",", "normal", "bmi", ",", "heart", "failure"]
    row = tok.encode([PROMPT], context_length=16)[0]
    n = len(words) + 2
    assert row[0] == SOT_ID and row[n - 1] == EOT_ID and (row[n:] == PAD_ID).all()
    assert [tok.vocab[i] for i in row[1:n - 1]] == words
    assert tok.encode([""], 5).tolist() == [[SOT_ID, EOT_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert torch.equal(tok.encode(PROMPT), tok.encode([PROMPT]))  # a lone string is one prompt


def test_tokenizer_truncates_keeping_eot_and_maps_unknown_words():
    tok = Tokenizer()
    row = tok.encode([PROMPT], context_length=6)[0]
    assert row.tolist() == [SOT_ID, *[tok.token_to_id[w] for w in split_words(PROMPT)[:4]], EOT_ID]
    unk = tok.encode(["Female, age 47, zebra"])[0]
    assert (unk == UNK_ID).sum() == 2 and tok.decode(unk[None]) == ["female, age <unk>, <unk>"]
    with pytest.raises(InputError, match="context_length"):
        tok.encode([PROMPT], context_length=1)


def test_eot_positions():
    tok = Tokenizer()
    tokens = tok.encode([PROMPT, "", "male"], 16)
    assert eot_positions(tokens).tolist() == [12, 1, 2]
    with pytest.raises(InputError, match="eot"):
        eot_positions(torch.zeros(1, 4, dtype=torch.long))


# ---- text encoder ------------------------------------------------------------------------------------

def make_encoder(**kw):
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(width=32, layers=2, heads=4, **kw)).eval()


def test_shapes_and_pooled_is_state_at_eot():
    enc, tok = make_encoder(), Tokenizer()
    assert enc.config.vocab_size == tok.vocab_size
    tokens = tok.encode([PROMPT, "", "Male, obese BMI"])
    states, pooled = enc(tokens)
    assert states.shape == (3, 16, 32) and pooled.shape == (3, 32)
    for b, pos in enumerate(eot_positions(tokens).tolist()):
        assert torch.equal(pooled[b], states[b, pos])
    assert not torch.allclose(pooled[0], pooled[1])


def test_attention_is_causal():
    enc, tok = make_encoder(), Tokenizer()
    tokens = tok.encode([PROMPT])
    changed = tokens.clone()
    changed[0, 5] = tok.token_to_id["obese"]
    a, _ = enc(tokens)
    b, _ = enc(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert (a[0, 5:] - b[0, 5:]).abs().amax(dim=1).min() > 1e-4  # every later position sees the change


def test_padding_and_context_length_do_not_change_the_prompt_embedding():
    enc, tok = make_encoder(), Tokenizer()
    s16, p16 = enc(tok.encode(["Male, age in 60s"], 16))
    s8, p8 = enc(tok.encode(["Male, age in 60s"], 8))
    assert torch.allclose(p16, p8, atol=1e-6) and torch.allclose(s16[:, :8], s8, atol=1e-6)


def test_encoder_rejects_bad_tokens_and_config():
    enc = make_encoder()
    with pytest.raises(InputError, match="tokens"):
        enc(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(InputError, match="tokens"):
        enc(torch.tensor([[1, 999, 2]]))
    with pytest.raises(InputError, match="heads"):
        TextEncoder(TextEncoderConfig(width=30, heads=4))
    with pytest.raises(InputError, match="unknown backend 'flash'"):
        TextEncoderConfig(attention_backend="flash")


def test_attention_backend_reaches_every_block_and_trains_alike():
    """text.attention_backend sets every block's attention; under bf16 training on the CPU the default (the math
    path there) and "fused" (torch's kernel) give the same states and gradients to bf16 rounding."""
    tokens = Tokenizer().encode([PROMPT, "Male, age in 60s, obese, healthy"])
    grads = {}
    for backend in ("sdpa", "fused"):
        torch.manual_seed(0)
        enc = TextEncoder(TextEncoderConfig(attention_backend=backend))
        assert [b.attn.backend for b in enc.blocks] == [backend] * enc.config.layers
        with torch.autocast("cpu", dtype=torch.bfloat16):
            states, _ = enc(tokens)
        states.float().square().mean().backward()
        grads[backend] = (states.detach().float(), enc.token_embedding.weight.grad.clone())
    (s_math, g_math), (s_fused, g_fused) = grads["sdpa"], grads["fused"]
    for a, b in ((s_math, s_fused), (g_math, g_fused)):
        assert 0 < ((a - b).norm() / b.norm()).item() < 0.02  # different kernels, equal to bf16's ~0.4 %


def test_encoder_trains():
    enc, tok = make_encoder(), Tokenizer()
    _, pooled = TextEncoder.train(enc)(tok.encode([PROMPT]))
    pooled.square().sum().backward()
    assert enc.token_embedding.weight.grad is not None and enc.positional_embedding.grad.abs().sum() > 0


# ---- prompt cache ------------------------------------------------------------------------------------

def test_prompt_cache_matches_direct_encoding_and_needs_a_frozen_encoder():
    enc, tok = make_encoder(), Tokenizer()
    with pytest.raises(InputError, match="freeze"):
        PromptEmbeddingCache(enc, tok.encode)
    enc.requires_grad_(False)
    calls = []
    cache = PromptEmbeddingCache(enc, lambda texts: calls.append(len(texts)) or tok.encode(texts))
    prompts = [PROMPT, "", PROMPT]
    states, pooled = cache(prompts)
    direct_states, direct_pooled = enc(tok.encode(prompts))
    assert torch.allclose(states, direct_states, atol=1e-6) and torch.allclose(pooled, direct_pooled, atol=1e-6)
    assert calls == [2] and len(cache) == 2 and "" in cache
    cache([PROMPT, "Male"])
    assert calls == [2, 1] and cache[PROMPT][1].shape == (32,)
    cache.clear()
    assert len(cache) == 0


# ---- optional open_clip tower --------------------------------------------------------------------------

def test_open_clip_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="not found"):
        load_open_clip_text_tower("ViT-B-32", tmp_path / "absent.pt", freeze=True)
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"open-clip-torch is not installed; pip install cardiac-ldm\[clip\]"):
        load_open_clip_text_tower("ViT-B-32", weights, freeze=True)


class SeqFirstTransformer(nn.Module):
    """Like older open_clip: (L, B, W) input and an additive attn_mask keyword."""

    def __init__(self, width):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2)

    def forward(self, x, attn_mask=None):
        return x + self.attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]


class FakeClip(nn.Module):
    """Stand-in with open_clip's CLIP text attributes (sequence-first transformer, additive causal mask)."""

    def __init__(self, vocab=50, width=16, context=8):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width))
        self.transformer = SeqFirstTransformer(width)
        self.ln_final = nn.LayerNorm(width)
        self.visual = nn.Linear(4, 4)
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)


def test_open_clip_wrapper_with_a_fake_package(tmp_path, monkeypatch):
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(FakeClip().state_dict(), weights)
    fake = types.ModuleType("open_clip")
    fake.create_model = lambda name, pretrained=None: FakeClip() if pretrained is None else None
    fake.get_tokenizer = lambda name: lambda texts: torch.tensor([[5, 7, 49, 0, 0], [8, 49, 0, 0, 0]][: len(texts)])
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    tower = load_open_clip_text_tower("fake", weights, freeze=True)
    assert not any(p.requires_grad for p in tower.parameters()) and tower.tower.visual is None
    assert torch.equal(tower.tower.token_embedding.weight, torch.load(weights)["token_embedding.weight"])
    tokens = tower.tokenize(["a", "b"])
    states, pooled = tower(tokens)
    assert states.shape == (2, 5, 16) and torch.equal(pooled, states[[0, 1], [2, 1]])  # eot = max id
    assert torch.allclose(tower(tokens[:1])[0], states[:1], atol=1e-6)  # samples stay independent
    changed = tokens.clone()
    changed[:, 3] = 9
    assert torch.allclose(tower(changed)[0][:, :3], states[:, :3], atol=1e-6)  # causal mask applied
    torch.save({"token_embedding.weight": torch.zeros(3, 3)}, weights)
    with pytest.raises(InputError, match="w.pt"):
        load_open_clip_text_tower("fake", weights, freeze=True)
