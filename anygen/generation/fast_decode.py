"""A lean single-token decode step for Llama-architecture cores: the CPU fast path of the decoding loop.

For one new token per row, most of the time of a stock transformers forward goes to Python: module dispatch, mask
construction over the whole static cache, output dataclasses and hooks, not to the matrix products. This step
computes the same function from the core's own parameters with a handful of tensor ops per layer (in the spirit of
gpt-fast): RMSNorm, the attention projections, the core's own rotary embedding, an in-place write into the same
:class:`transformers.StaticCache` the prefill filled, ``scaled_dot_product_attention`` against a precomputed
boolean mask, and the SwiGLU MLP. The weights are read in place, never copied, so a model that trains between two
calls is seen as it is now.

It applies only where it is provably the same computation (:func:`supports`): a ``LlamaForCausalLM`` whose
projections are plain ``nn.Linear`` without bias, no module carrying a forward hook, SiLU activation, ``sdpa`` or
``eager`` attention. Anything else (hooks such as gated adapters, other architectures, wrapped cores) decodes through
the core's ``forward``. Logits equal the transformers forward to float rounding (``tests/test_fast_decode.py``). A
caller that knows which ids may come next passes those rows of the output matrix (``head=``) and reads no others.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["supports", "LlamaDecodeStep", "compiled_step"]


def supports(core: nn.Module) -> bool:
    """Whether :class:`LlamaDecodeStep` computes exactly what ``core.forward`` computes for one token per row."""
    config = getattr(core, "config", None)
    if type(core).__name__ != "LlamaForCausalLM" or config is None:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if config.hidden_act != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return False
    if type(core.lm_head) is not nn.Linear or core.lm_head.bias is not None:
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in core.modules()):  # e.g. gated adapters
        return False
    for layer in core.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if type(proj) is not nn.Linear or proj.bias is not None:
                return False
    return True


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class LlamaDecodeStep:
    """Decode one token per row of a core for which :func:`supports` holds, over static per-layer key/value tensors
    ``(R, kv_heads, C, head_dim)`` (a :class:`transformers.StaticCache` that a prefill filled, or the scheduler's
    slot cache): each row writes its new key and value at its own column and attends where ``mask`` says."""

    def __init__(self, core: nn.Module, cache: object) -> None:
        config = core.config
        self.core, self.cache = core, cache
        self.layers = list(core.model.layers[: config.num_hidden_layers])
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.scaling = self.layers[0].self_attn.scaling if self.layers else self.head_dim ** -0.5

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor,
                 head: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``(R, V)``: :meth:`hidden` times ``head`` (default: the core's whole output matrix;
        a caller that knows which ids a step may emit passes those rows of it and gets ``(R, len(head))``)."""
        return F.linear(self.hidden(tokens, positions, columns, mask),
                        self.core.lm_head.weight if head is None else head)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """The last layer's normalised output ``(R, H)``, the input of the output matrix.

        Args:
            tokens: ``(R, 1)`` ids; positions: ``(R, 1)`` their rotary positions.
            columns: ``(R,)`` the cache column each row's key and value go to.
            mask: ``(R, 1, 1, C)`` bool, True where a row may attend (its new column included). Only the cache's
                first ``C`` columns are read, so a caller whose rows use few columns of a long cache passes a
                short mask.
        """
        model = self.core.model
        x = model.embed_tokens(tokens)  # (R, 1, H)
        cos, sin = model.rotary_emb(x, position_ids=positions)
        cos, sin = cos[:, None], sin[:, None]  # (R, 1, 1, D)
        rows, length = x.shape[0], mask.shape[-1]
        index = columns.view(rows, 1, 1, 1).expand(rows, self.kv_heads, 1, self.head_dim)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = _rms_norm(x, layer.input_layernorm)
            q = F.linear(h, attn.q_proj.weight).view(rows, 1, self.heads, self.head_dim).transpose(1, 2)
            k = F.linear(h, attn.k_proj.weight).view(rows, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = F.linear(h, attn.v_proj.weight).view(rows, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            store = self.cache.layers[i]
            store.keys.scatter_(2, index, k)
            store.values.scatter_(2, index, v)
            o = F.scaled_dot_product_attention(q, store.keys[:, :, :length], store.values[:, :, :length],
                                               attn_mask=mask, scale=self.scaling,
                                               enable_gqa=self.heads != self.kv_heads)
            x = x + F.linear(o.transpose(1, 2).reshape(rows, 1, -1), attn.o_proj.weight)
            h = _rms_norm(x, layer.post_attention_layernorm)
            x = x + F.linear(F.silu(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight),
                             mlp.down_proj.weight)
        return _rms_norm(x[:, -1], model.norm)  # (R, H)


_compiled_hidden: dict[str, Callable[..., torch.Tensor]] = {}  # one per device type


def compiled_step(core: nn.Module, cache: object) -> Callable[..., torch.Tensor]:
    """A :class:`LlamaDecodeStep` whose :meth:`~LlamaDecodeStep.hidden` is ``torch.compile``-d (the output matrix,
    whole or the rows a caller passes as ``head=``, runs eagerly after it). Every step shares one compiled function,
    so a trace is reused by every later step and call with the same core (after a second batch size or cache length,
    torch traces once more with symbolic sizes, which then serves them all).

    On a CPU the compiled graph is launched from C++ as well (inductor's ``cpp_wrapper``): the same kernels and
    numbers, without a Python call per kernel and tensor view, a few hundred microseconds less per step for a small
    core (benchmarks/RESULTS.md, decode speed)."""
    device = core.lm_head.weight.device.type
    if device not in _compiled_hidden:
        options = {"cpp_wrapper": True} if device == "cpu" else None
        _compiled_hidden[device] = torch.compile(LlamaDecodeStep.hidden, options=options)
    hidden = _compiled_hidden[device]
    step = LlamaDecodeStep(core, cache)

    def call(*args: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(hidden(step, *args), core.lm_head.weight if head is None else head)
    return call
