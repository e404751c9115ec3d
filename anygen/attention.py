"""Optional xformers attention for the transformers core (CUDA only; install the ``cuda`` extra).

``attn_implementation="xformers"`` registers :func:`xformers_attention` with transformers' ``AttentionInterface``
(no monkey patching: it is transformers' own extension point). On CPU the default, torch's SDPA, is used.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange

from anygen.errors import InvalidArgumentError

NAME = "xformers"


def register_xformers() -> str:
    """Register the xformers kernel with transformers and return its name; a clear error when unusable."""
    if not torch.cuda.is_available():
        raise InvalidArgumentError("attn_implementation='xformers' needs a CUDA GPU; use 'sdpa' on CPU")
    try:
        from xformers import ops  # noqa: F401
    except ImportError as err:
        raise InvalidArgumentError("attn_implementation='xformers' needs `pip install anygen[cuda]`") from err
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, xformers_attention)
    return NAME


def xformers_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       kernel: Callable | None = None, **_: object) -> tuple[torch.Tensor, None]:
    """transformers attention signature over ``xformers.ops.memory_efficient_attention``.

    Args:
        query: ``(B, H, Tq, D)``; key, value: ``(B, Hkv, Tk, D)`` (grouped-query heads are repeated).
        attention_mask: ``(B, 1, Tq, Tk)`` boolean (True = attend) or additive float mask, or ``None``.
        kernel: the attention kernel (default: xformers'); takes ``(B, T, H, D)`` tensors.
    Returns:
        ``(B, Tq, H, D)`` output (the layout transformers expects from attention functions) and ``None``.
    """
    if kernel is None:
        from xformers.ops import memory_efficient_attention as kernel
    groups = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))  # (B, H, Tk, D)
    bias = None
    if attention_mask is not None:
        bias = attention_mask
        if bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(~bias, float("-inf"))
        bias = bias.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    q, k, v = (rearrange(t, "b h t d -> b t h d") for t in (query, key, value))
    out = kernel(q, k, v, attn_bias=bias, p=dropout if module.training else 0.0, scale=scaling)
    return out, None
