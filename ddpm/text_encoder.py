"""CLIP-architecture text encoder (trained from scratch), optional pretrained open_clip text tower, prompt cache.

Both encoders map tokens (B, L) -> (states (B, L, width), pooled (B, width)); pooled is the final state at
the end-of-text token, as in CLIP. With causal attention the padding after <eot> never changes them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from data.errors import InputError
from data.limits import MAX_LAYERS, MAX_WIDTH
from data.fields import bounded, check_fields
from ddpm.attention import attention, check_backend
from ddpm.tokenizer import Tokenizer, eot_positions


@dataclass
class TextEncoderConfig:
    # Size caps keep a checkpoint's embedded config from building a model of a size the file merely claims.
    vocab_size: Optional[int] = bounded(None, lo=1, hi=1 << 20)  # None: the built-in Tokenizer's vocabulary size
    context_length: int = bounded(16, lo=1, hi=1024)
    width: int = bounded(128, lo=1, hi=MAX_WIDTH)
    layers: int = bounded(2, lo=1, hi=MAX_LAYERS)
    heads: int = bounded(4, lo=1, hi=64)
    # Optional pretrained tower ([clip] extra): an open_clip model name and a LOCAL weights file; width must
    # then equal the tower's width. freeze=True trains the UNet against cached prompt embeddings.
    open_clip_model: Optional[str] = None
    open_clip_weights: Optional[str] = None
    freeze: bool = True
    attention_backend: str = "sdpa"  # ddpm.attention.BACKENDS: "fused" keeps torch's kernel for CPU training too

    def __post_init__(self) -> None:
        check_fields(self, "text")
        check_backend(self.attention_backend, 1)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, backend: str = "sdpa") -> None:
        super().__init__()
        self.heads, self.backend = heads, backend  # ddpm.attention.BACKENDS
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, W) -> (B, L, W); position i attends to positions <= i only."""
        B, L, W = x.shape
        q, k, v = (z.reshape(B, L, self.heads, W // self.heads).transpose(1, 2) for z in self.qkv(x).split(W, dim=2))
        y = attention(q, k, v, self.backend, causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, L, W))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with a 4x GELU MLP."""

    def __init__(self, width: int, heads: int, backend: str = "sdpa") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, backend)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextEncoder(nn.Module):
    """CLIP text transformer: token + learned position embeddings, causal pre-LN blocks, final LayerNorm."""

    def __init__(self, config: Optional[TextEncoderConfig] = None) -> None:
        super().__init__()
        config = TextEncoderConfig() if config is None else config
        self.tokenizer = Tokenizer()
        vocab_size = self.tokenizer.vocab_size if config.vocab_size is None else config.vocab_size
        if config.width % config.heads != 0:
            raise InputError("text_encoder.heads", f"width {config.width} must be divisible by heads {config.heads}")
        if vocab_size < 4 or config.context_length < 2 or config.layers < 0:
            raise InputError("text_encoder", f"expected vocab_size >= 4, context_length >= 2, layers >= 0: {config}")
        self.config = replace(config, vocab_size=vocab_size)
        self.width = config.width
        self.token_embedding = nn.Embedding(vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.attention_backend) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        # CLIP's initialisation scales for the embeddings.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """B prompts -> (B, context_length) token ids of the built-in tokenizer, on this encoder's device."""
        tokens = self.tokenizer.encode(list(texts), self.config.context_length)
        return tokens.to(self.token_embedding.weight.device)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: (B, L) with L <= context_length -> (states (B, L, width), pooled (B, width))."""
        if tokens.ndim != 2 or tokens.shape[1] > self.config.context_length:
            raise InputError("tokens", f"expected (B, L <= {self.config.context_length}) token ids, got shape {tuple(tokens.shape)}")
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.config.vocab_size:
            raise InputError("tokens", f"token ids must lie in [0, {self.config.vocab_size}); wrong tokenizer?")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        states = self.ln_final(x)
        pooled = states[torch.arange(states.shape[0], device=states.device), eot_positions(tokens)]
        return states, pooled


class OpenClipTextTower(nn.Module):
    """An open_clip model's text tower behind our interface; pooled = final state at <eot> (the max token id)."""

    def __init__(self, tower: nn.Module, tokenizer: Callable) -> None:
        super().__init__()
        self.tower = tower
        self.tokenizer = tokenizer
        self.width = int(tower.ln_final.weight.shape[0])

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts)).to(self.tower.token_embedding.weight.device)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: (B, L) from self.tokenize -> (states (B, L, width), pooled (B, width))."""
        tower, L = self.tower, tokens.shape[1]
        x = tower.token_embedding(tokens) + tower.positional_embedding[:L]
        mask = getattr(tower, "attn_mask", None)
        mask = None if mask is None else mask[:L, :L]
        # Older open_clip transformers are sequence-first (L, B, W).
        batch_first = getattr(tower.transformer, "batch_first", False)
        x = tower.transformer(x if batch_first else x.transpose(0, 1), attn_mask=mask)
        states = tower.ln_final(x if batch_first else x.transpose(0, 1))
        return states, states[torch.arange(states.shape[0], device=states.device), tokens.argmax(dim=-1)]


def _read_state_dict(weights_path: Path) -> dict:
    if weights_path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(weights_path))
    else:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise InputError(str(weights_path), "expected a state dict of tensors (an open_clip checkpoint)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_open_clip_text_tower(model_name: str, weights_path: Path, freeze: bool = True) -> OpenClipTextTower:
    """Build open_clip `model_name` (pretrained=None) and load the LOCAL weights file; never downloads."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise InputError(str(weights_path), "open_clip weights file not found (nothing is downloaded; give a local file)")
    try:
        import open_clip
    except ImportError:
        raise InputError("text_encoder", "open-clip-torch is not installed; pip install cardiac-ldm[clip] (CUDA machines only)") from None
    try:
        model = open_clip.create_model(model_name, pretrained=None)
    except (RuntimeError, ValueError, KeyError) as err:
        raise InputError("text_encoder.model_name", f"open_clip cannot build {model_name!r}: {err}") from None
    try:
        state = _read_state_dict(weights_path)
        model.load_state_dict(state)
    except InputError:
        raise
    except Exception as err:  # unreadable file or mismatched keys/shapes: both are a wrong weights file
        raise InputError(str(weights_path), f"cannot load as open_clip {model_name!r} weights: {str(err).splitlines()[0]}") from None
    tower = model.text if hasattr(model, "text") else model
    if hasattr(tower, "visual"):
        tower.visual = None  # the image tower is never used; free its memory
    wrapper = OpenClipTextTower(tower, open_clip.get_tokenizer(model_name))
    if freeze:
        wrapper.requires_grad_(False).eval()
    return wrapper


class PromptEmbeddingCache:
    """Dict-like prompt -> (states (L, W), pooled (W,)) for a FROZEN encoder (never when training it jointly)."""

    def __init__(self, encoder: nn.Module, tokenize: Callable[[list[str]], Tensor]) -> None:
        if any(p.requires_grad for p in encoder.parameters()):
            raise InputError("text_encoder.freeze", "a prompt embedding cache needs a frozen encoder; don't cache when training it")
        self.encoder = encoder
        self.tokenize = tokenize
        self._store: dict[str, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._store

    def __getitem__(self, prompt: str) -> tuple[Tensor, Tensor]:
        if prompt not in self._store:
            self(prompt)
        return self._store[prompt]

    def clear(self) -> None:
        self._store.clear()

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """prompts: B strings -> (states (B, L, W), pooled (B, W)); new prompts are encoded in one batch."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._store))
        if missing:
            device = next(self.encoder.parameters()).device
            states, pooled = self.encoder(self.tokenize(missing).to(device))
            self._store.update((p, (s, q)) for p, s, q in zip(missing, states, pooled))
        return (torch.stack([self._store[p][0] for p in prompts]), torch.stack([self._store[p][1] for p in prompts]))


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """Our CLIP-style encoder (trained jointly), or a local pretrained open_clip tower when configured."""
    if config.open_clip_weights is None:
        return TextEncoder(config)
    tower = load_open_clip_text_tower(config.open_clip_model or "", Path(config.open_clip_weights), config.freeze)
    if tower.width != config.width:
        raise InputError("text.width", f"{config.width} but the open_clip tower {config.open_clip_model!r} has width "
                                       f"{tower.width}; set text.width and unet.context_dim to {tower.width}")
    return tower


def is_frozen(encoder: nn.Module) -> bool:
    return not any(p.requires_grad for p in encoder.parameters())
