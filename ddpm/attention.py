"""The one attention function of the project (torch's SDPA kernels or query-sliced math) and a multi-head module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.errors import InputError

BACKENDS = ("sdpa", "fused", "sliced")
# Up to this many scores per head (Lq * Lk) the math path's forward + backward beats torch's fused CPU kernel's in
# bf16 (3.1-4.5x at the tiny preset's lengths, 2.0x at 256 x 256; 2.8x slower at 1024 x 1024: bench/cpu_attention.py)
SHORT_SCORES = 256 * 256


def check_backend(backend: str, chunk_size: int) -> None:
    """Raise InputError for an unknown backend or a non-positive chunk size."""
    if backend not in BACKENDS:
        raise InputError("attention", f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError("attention", f"chunk_size must be a positive int, got {chunk_size!r}")


def slow_fused_backward(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether autograd will record this call on the CPU in half precision at short lengths (see SHORT_SCORES)."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad) and q.shape[2] * k.shape[2] <= SHORT_SCORES)


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa", chunk_size: int = 1024,
              causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d)) v; causal: query i sees keys j <= i only (Lq == Lk).

    q: (B, heads, Lq, d), k: (B, heads, Lk, d), v: (B, heads, Lk, dv) -> (B, heads, Lq, dv).

    "fused": torch's SDPA kernels (flash / memory-efficient where the device has them), always.
    "sdpa": "fused", except that a half-precision CPU call whose backward will run, at Lq * Lk <= SHORT_SCORES,
    takes the math path: there torch's fused CPU backward is the slow part of a training step (sampling is unchanged).
    "sliced": plain math over query chunks, so the score matrix never exceeds (B, heads, chunk_size, Lk).
    """
    check_backend(backend, chunk_size)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError("attention", "q, k, v must be (B, heads, L, d); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[-1] != q.shape[-1]:
        raise InputError("attention", f"mismatched shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if causal and q.shape[2] != k.shape[2]:
        raise InputError("attention", f"causal attention needs as many queries as keys, got {q.shape[2]} and "
                                      f"{k.shape[2]}")
    if backend == "sdpa" and slow_fused_backward(q, k, v):
        backend, chunk_size = "sliced", q.shape[2]
    if backend != "sliced":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scale = q.shape[-1] ** -0.5
    k_t = k.transpose(-1, -2)
    out = []
    for start in range(0, q.shape[2], chunk_size):
        scores = torch.matmul(q[:, :, start:start + chunk_size], k_t) * scale
        if causal:
            rows = torch.arange(start, start + scores.shape[2], device=q.device)[:, None]
            scores = scores.masked_fill(torch.arange(k.shape[2], device=q.device) > rows, float("-inf"))
        # softmax in fp32 at least: half-precision exp overflows/underflows on long keys; float64 stays float64
        wide = scores.to(torch.promote_types(scores.dtype, torch.float32))
        out.append(torch.matmul(wide.softmax(dim=-1).to(v.dtype), v))
    return torch.cat(out, dim=2)


class Attention(nn.Module):
    """Multi-head attention: self-attention when context is None, else cross-attention to context."""

    def __init__(self, dim: int, context_dim: int | None = None, num_heads: int = 4,
                 backend: str = "sdpa", chunk_size: int = 1024) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise InputError("attention", f"dim {dim} must be divisible by num_heads {num_heads}")
        check_backend(backend, chunk_size)
        self.num_heads = num_heads
        self.backend = backend
        self.chunk_size = chunk_size
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (B, L, dim), context: (B, Lc, context_dim) or None -> (B, L, dim)."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # (B, L, heads*d) -> (B, heads, L, d)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, self.backend, self.chunk_size)
        return self.to_out(out.transpose(1, 2).flatten(2))
