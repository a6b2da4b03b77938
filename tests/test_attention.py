"""ddpm.attention: the SDPA, fused and sliced backends compute the same attention; bad backends are rejected."""
import pytest
import torch
import torch.nn.functional as F

from data.errors import InputError
from ddpm.attention import SHORT_SCORES, Attention, attention, slow_fused_backward


def _qkv(lq: int, lk: int, d: int = 8, dv: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, lq, d, generator=g)
    k = torch.randn(2, 3, lk, d, generator=g)
    v = torch.randn(2, 3, lk, dv, generator=g)
    return q, k, v


def _reference(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


@pytest.mark.parametrize("lq,lk,chunk", [(37, 37, 8), (37, 11, 5), (5, 9, 64), (16, 16, 1)])
def test_sdpa_and_sliced_agree_with_the_definition(lq, lk, chunk):
    q, k, v = _qkv(lq, lk)
    sdpa = attention(q, k, v, "sdpa")
    sliced = attention(q, k, v, "sliced", chunk_size=chunk)
    assert sliced.shape == (2, 3, lq, 8)
    torch.testing.assert_close(sliced, sdpa, atol=1e-5, rtol=0)
    torch.testing.assert_close(sliced, _reference(q, k, v), atol=1e-5, rtol=0)


def test_identical_keys_average_the_values():
    # equal scores -> uniform softmax -> every query returns the mean value
    q, _, v = _qkv(13, 6, dv=5)
    k = torch.ones(2, 3, 6, 8)
    for backend in ("sdpa", "sliced"):
        out = attention(q, k, v, backend, chunk_size=4)
        torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(out), atol=1e-5, rtol=0)


def test_sliced_gradients_match_sdpa():
    grads = {}
    for backend in ("sdpa", "sliced"):
        q, k, v = (t.requires_grad_() for t in _qkv(21, 10))
        (attention(q, k, v, backend, chunk_size=4) ** 2).sum().backward()
        grads[backend] = (q.grad, k.grad, v.grad)
    for a, b in zip(grads["sdpa"], grads["sliced"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sliced_half_precision_stays_finite():
    q, k, v = (t.to(torch.bfloat16) * 8 for t in _qkv(9, 300))
    out = attention(q, k, v, "sliced", chunk_size=4)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["sdpa", "sliced"])
def test_float64_stays_float64(backend):
    q, k, v = (t.double() for t in _qkv(37, 300))
    out = attention(q, k, v, backend, chunk_size=8)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _reference(q, k, v), atol=1e-12, rtol=0)  # a float32 softmax errs by ~1e-7


@pytest.mark.parametrize("context_len", [None, 7])
def test_module_self_and_cross_attention_backends_agree(context_len):
    torch.manual_seed(0)
    layer = Attention(dim=12, context_dim=None if context_len is None else 5, num_heads=3)
    x = torch.randn(2, 19, 12)
    context = None if context_len is None else torch.randn(2, context_len, 5)
    expected = layer(x, context)
    assert expected.shape == x.shape
    layer.backend, layer.chunk_size = "sliced", 6
    assert (layer.backend, layer.chunk_size) == ("sliced", 6)
    torch.testing.assert_close(layer(x, context), expected, atol=1e-5, rtol=0)


def test_cross_attention_depends_on_context():
    torch.manual_seed(0)
    layer = Attention(dim=8, context_dim=4, num_heads=2)
    x = torch.randn(1, 5, 8)
    assert not torch.allclose(layer(x, torch.randn(1, 3, 4)), layer(x, torch.randn(1, 3, 4)))


def test_unknown_backend_and_bad_chunk_raise_input_error():
    q, k, v = _qkv(4, 4)
    with pytest.raises(InputError, match="backend"):
        attention(q, k, v, backend="flash3")
    with pytest.raises(InputError, match="chunk_size"):
        attention(q, k, v, backend="sliced", chunk_size=0)
    with pytest.raises(InputError, match="backend"):
        Attention(8, backend="xformers")
    with pytest.raises(InputError, match="num_heads"):
        Attention(10, num_heads=3)
    with pytest.raises(InputError, match="shapes"):
        attention(q, k[..., :3], v)


@pytest.mark.parametrize("lk", [16, 64])
def test_sdpa_takes_the_math_path_only_where_a_bf16_cpu_backward_will_run(lk):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 32, dtype=torch.bfloat16) for n in (64, lk, lk))
    with torch.no_grad():  # inference: torch's kernel, untouched
        assert torch.equal(attention(q, k, v, "sdpa"), F.scaled_dot_product_attention(q, k, v))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = attention(*leaves, "sdpa")
    assert torch.equal(out, attention(*leaves, "sliced", chunk_size=64))  # the math path, bit for bit
    assert torch.equal(attention(*leaves, "fused"), F.scaled_dot_product_attention(*leaves))
    # the same attention and gradients as torch's kernel, to bf16 rounding
    grads = torch.autograd.grad(out.float().square().sum(), leaves)
    fused = [t.clone().requires_grad_(True) for t in (q, k, v)]
    fused_grads = torch.autograd.grad(attention(*fused, "fused").float().square().sum(), fused)
    for mine, ref in zip((out, *grads), (attention(*fused, "fused"), *fused_grads)):
        assert torch.allclose(mine.float(), ref.float(), atol=0.05, rtol=0.05)
    long_q = torch.randn(1, 1, SHORT_SCORES // lk + 1, 32, dtype=torch.bfloat16, requires_grad=True)
    assert not slow_fused_backward(long_q, k, v) and slow_fused_backward(long_q[:, :, :64], k, v)
    assert not slow_fused_backward(q.float().requires_grad_(True), k.float(), v.float())  # fp32: torch's kernel


@pytest.mark.parametrize("dtype,chunk", [(torch.float32, 3), (torch.float32, 16), (torch.bfloat16, 16)])
def test_causal_math_path_is_torchs_causal_attention(dtype, chunk):
    q, k, v = (t.to(dtype).requires_grad_(True) for t in _qkv(7, 7))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for backend in ("sdpa", "sliced"):  # bf16 with grad: "sdpa" takes the math path too
        out = attention(q, k, v, backend, chunk_size=chunk, causal=True)
        assert torch.allclose(out.float(), ref.float(), atol=1e-5 if dtype == torch.float32 else 0.03)
    # query 0 sees key 0 only; the last query sees every key
    assert torch.allclose(attention(q, k, v, "sliced", causal=True)[:, :, 0].float(), v[:, :, 0].float())
    with pytest.raises(InputError, match="as many queries as keys"):
        attention(q, k[:, :, :5], v[:, :, :5], causal=True)
