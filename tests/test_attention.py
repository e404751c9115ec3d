"""The xformers adapter's layout and masking, checked against torch SDPA with a stand-in kernel (xformers is
CUDA-only; on a GPU machine the real kernel is used)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from anygen.attention import register_xformers, xformers_attention
from anygen.errors import InvalidArgumentError


def sdpa_kernel(q, k, v, attn_bias=None, p=0.0, scale=None):
    """Reference with xformers' calling convention: (B, T, H, D) in and out."""
    q, k, v = (rearrange(t, "b t h d -> b h t d") for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=p, scale=scale)
    return rearrange(out, "b h t d -> b t h d")


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_adapter_matches_sdpa_with_grouped_heads(mask_kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 5, 16, generator=g)
    k, v = torch.randn(2, 2, 7, 16, generator=g), torch.randn(2, 2, 7, 16, generator=g)
    keep = torch.rand(2, 1, 5, 7, generator=g) > 0.3
    keep[..., 0] = True
    mask = {"none": None, "bool": keep,
            "float": torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))}[mask_kind]
    module = torch.nn.Module().eval()
    out, _ = xformers_attention(module, q, k, v, mask, scaling=0.25, kernel=sdpa_kernel)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                         attn_mask=None if mask is None else keep, scale=0.25)
    assert out.shape == (2, 5, 8, 16)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_xformers_on_cpu_is_refused_clearly() -> None:
    with pytest.raises(InvalidArgumentError, match="CUDA"):
        register_xformers()


def test_sdpa_and_eager_cores_agree() -> None:
    from anygen.core import CoreConfig, build_core

    torch.manual_seed(0)
    config = CoreConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    sdpa = build_core(config, 256, "sdpa").eval()
    eager = build_core(config, 256, "eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 256, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        a = sdpa(input_ids=ids, attention_mask=mask).logits
        b = eager(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a[:, 4:], b[:, 4:], atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="attn_implementation"):
        build_core(config, 256, "flash")
