"""A lean single-token decode step for Llama-architecture cores: the CPU fast path of the decoding loop.

For one new token per row, most of the time of a stock transformers forward goes to Python: module dispatch, mask
construction over the whole static cache, output dataclasses and hooks, not to the matrix products. This step
computes the same function from the core's own parameters with a handful of tensor ops per layer (in the spirit of
gpt-fast): RMSNorm, the attention projections, the core's own rotary embedding, an in-place write into the same
:class:`transformers.StaticCache` the prefill filled, ``scaled_dot_product_attention`` against a precomputed
boolean mask, and the SwiGLU MLP. Prompts go through the same layers, all their tokens at once
(:meth:`LlamaDecodeStep.prefill`).

On a CPU other than Intel's, the matrix products of a float32 core too large for the CPU's caches read
oneDNN-packed copies of its weight matrices (:class:`PackedWeights`): at one to a few dozen rows a packed product
streams the weights from memory about twice as fast as ``F.linear`` (MKL) does on an AMD CPU (benchmarks/RESULTS.md,
decode speed), and decoding is reading the weights; on an Intel CPU MKL is as fast (:data:`PACK_BY_DEFAULT`). A
copy is renewed whenever its weight changes (its version counter moves, as every in-place update does, or it gets
new storage), so a model that trains between two calls is seen as it is now. A change made
behind the version counter (through ``param.data``) is not seen: set :data:`PACK_MAX_BYTES` to 0 to read the
weights in place instead (no second copy in memory either).

A step may also multiply in bfloat16 (``matmul_dtype=torch.bfloat16``; the server's ``--matmul-dtype bfloat16``, the
pipelines' ``matmul_dtype="bfloat16"``; :func:`packed_forward` likewise for scoring passes):
the packed copies are then bfloat16 and each product's input is rounded to bfloat16, its output read back as
float32; everything else (norms, rotary, attention, the residual stream, the cache) stays float32. On a CPU with
bfloat16 matrix units (AMX, AVX512-BF16: :func:`bf16_matmul_supported`) a block of 32 rows then runs 1.2-2x as fast
(docs/serving.md); at one or two rows, where decoding is Python and small ops, it gains little.

It applies only where it is provably the same computation (:func:`supports`): a ``LlamaForCausalLM`` whose
projections are plain ``nn.Linear`` without bias, no module carrying a forward hook, SiLU activation, ``sdpa`` or
``eager`` attention. Anything else (hooks such as gated adapters, other architectures, wrapped cores) decodes through
the core's ``forward``. Logits equal the transformers forward to float rounding (``tests/test_fast_decode.py``). A
caller that knows which ids may come next passes those rows of the output matrix (``rows=``) and reads no others.
"""

from __future__ import annotations

import platform
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from anygen.errors import InvalidArgumentError

__all__ = ["supports", "LlamaDecodeStep", "compiled_step", "PackedWeights", "packed_forward", "PACK_MIN_BYTES",
           "PACK_MAX_BYTES", "PACK_BY_DEFAULT", "MATMUL_DTYPES", "AUTO_BF16_MIN_ROWS", "AUTO_BF16_MIN_BYTES",
           "bf16_matmul_supported", "bf16_matmul_problem", "fastest_matmul_dtype"]

PACK_MIN_BYTES = 32 * 2**20
"""Cores whose weights take fewer bytes than this decode from the weights in place: they stay in the CPU's caches,
where ``F.linear`` is fast and a packed product's fixed cost per call (~8 us more) is not repaid (a 23 MB core
decodes ~10% slower packed, a 54 MB one 30-60% faster)."""


def _mkl_on_intel() -> bool:
    """Whether ``F.linear`` runs on MKL (the BLAS of torch's x86 wheels) on an Intel CPU, where MKL picks its fastest
    kernels."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in info)
    except OSError:
        return "GenuineIntel" in platform.processor()


PACK_MAX_BYTES = 2 * 2**30
"""Cores whose weights take more bytes than this decode from the weights in place too: the packed copies double the
weights' memory (and copy the output matrix's rows once more for each id range a step narrows to, e.g. an image
span's codes). 0 turns packing off."""
PACK_BY_DEFAULT = not _mkl_on_intel()
"""Whether the pipelines' decoding and scoring read packed copies on this CPU (within the bounds above): not on an
Intel CPU, where MKL's ``F.linear`` reads the weights as fast as a packed product or faster (anygen-tiny's calls
0.65-1.08x as fast packed, ``benchmarks/packed_weights.py``), while on the AMD CPU of benchmarks/RESULTS.md the
packed products made them 1.4-1.9x faster. The server's scheduler packs on every CPU (``always``): a packed
product computes each row alike at every row count, so a block may run only the rows in use."""
PACK_ROWS = 2  # the row count oneDNN packs for: streams faster than a one-row packing even at one row, and at more
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The dtypes a step's matrix products may run in, by name."""


def bf16_matmul_supported() -> bool:
    """Whether this torch build and CPU multiply in bfloat16 natively through oneDNN (AMX or AVX512-BF16); elsewhere
    oneDNN would emulate it, slower than float32."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") \
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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
    if x.dtype == norm.weight.dtype == torch.float32:  # one fused op; the same arithmetic as below
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: ``x * cos + rotate_half(x) * sin``, with ``rotate_half(x) * sin`` taken as ``x`` rolled by
    half its width times ``signed_sin`` (``sin`` with its first half negated): the same products, fewer ops."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


class PackedWeights:
    """oneDNN-packed copies of one core's weight matrices, each made on first use and made again once one of its
    weights has changed in place or been replaced. Matrices that read the same input are packed as one (the
    query, key and value projections; the gate and up projections), which streams faster than three or two.
    ``dtype``: the copies' dtype; a product's input is cast to it and its output back to the input's dtype."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        # key (the weights' ids and a row range) -> (weak references to the weights, their versions and storage
        # at packing time, the packed copy); an entry goes when one of its weights does.
        self._copies: dict[tuple, tuple[tuple, tuple, torch.Tensor]] = {}

    def linear(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...], rows: slice | None = None) -> torch.Tensor:
        """``F.linear(x, torch.cat(weights)[rows])`` through the packed copy."""
        key = (*map(id, weights), None if rows is None else (rows.start, rows.stop))
        stamp = tuple((w._version, w.data_ptr()) for w in weights)
        entry = self._copies.get(key)
        if entry is None or entry[1] != stamp or any(ref() is not w for ref, w in zip(entry[0], weights)):
            source = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
            source = (source if rows is None else source[rows]).to(self.dtype)
            forget = lambda _, copies=self._copies: copies.pop(key, None)  # noqa: E731
            entry = self._copies[key] = (tuple(weakref.ref(w, forget) for w in weights), stamp,
                                         torch.ops.mkldnn._reorder_linear_weight(source, PACK_ROWS))
        if x.dtype == self.dtype:
            return torch.ops.mkldnn._linear_pointwise(x, entry[2], None, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), entry[2], None, "none", [], "").to(x.dtype)


_packed: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, PackedWeights]] = weakref.WeakKeyDictionary()


def _weights(core: nn.Module) -> list[torch.Tensor]:
    """The core's parameters, each once (tied ones share their storage)."""
    return list({p.data_ptr(): p for p in core.parameters()}.values())


def _weight_bytes(weights: list[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in weights)


def packed_weights(core: nn.Module, always: bool = False,
                   dtype: torch.dtype = torch.float32) -> PackedWeights | None:
    """The core's :class:`PackedWeights` of ``dtype`` (shared by every step over it), or None where packing does not
    apply: not a float32 core on a CPU, no oneDNN in this torch build, weights outside :data:`PACK_MIN_BYTES` to
    :data:`PACK_MAX_BYTES`, or a CPU that reads them as fast in place (:data:`PACK_BY_DEFAULT`) unless ``always``.
    bfloat16 copies are for products that run faster in bfloat16, so only :data:`PACK_MAX_BYTES` bounds them, and
    only a CPU that multiplies in bfloat16 natively (:func:`bf16_matmul_supported`) has them."""
    if not (PACK_BY_DEFAULT or always) or dtype not in MATMUL_DTYPES.values():
        return None
    weights = _weights(core)
    if not weights or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in weights) \
            or not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight") \
            or dtype == torch.bfloat16 and not bf16_matmul_supported():
        return None
    size = _weight_bytes(weights)
    smallest = PACK_MIN_BYTES if dtype == torch.float32 else 0
    if not smallest <= size <= PACK_MAX_BYTES:
        _packed.get(core, {}).pop(dtype, None)
        return None
    return _packed.setdefault(core, {}).setdefault(dtype, PackedWeights(dtype))


class _PackedLinears(TorchFunctionMode):
    """Sends ``F.linear`` calls on the given weights (no bias, autograd off) through their packed copies."""

    def __init__(self, packs: PackedWeights, weights: set[int]) -> None:
        super().__init__()
        self.packs, self.weights = packs, weights

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 -- torch's protocol
        kwargs = kwargs or {}
        if func is F.linear and not kwargs and (len(args) == 2 or len(args) == 3 and args[2] is None) \
                and id(args[1]) in self.weights and not torch.is_grad_enabled():
            return self.packs.linear(args[0], (args[1],))
        return func(*args, **kwargs)


@contextmanager
def packed_forward(core: nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Within the block, the core's own ``forward`` multiplies by the packed copies of its bias-free ``nn.Linear``
    weights where :func:`packed_weights` applies (scoring passes over many rows run ~2.5x faster products on this
    CPU); elsewhere, or while autograd records, it is the plain forward. ``dtype=torch.bfloat16``: by bfloat16
    copies wherever they apply (:func:`bf16_matmul_problem`), as a bfloat16 :class:`LlamaDecodeStep` does."""
    packs = packed_weights(core, always=dtype != torch.float32, dtype=dtype)
    if packs is None:
        yield
        return
    weights = {id(m.weight) for m in core.modules() if type(m) is nn.Linear and m.bias is None}
    with _PackedLinears(packs, weights):
        yield


def bf16_matmul_problem(core: nn.Module | None, pack: bool | None = True) -> str:
    """Why a :class:`LlamaDecodeStep` over ``core`` cannot multiply in bfloat16 (the end of an error message), or
    '' if it can (``core=None``: whether this CPU and torch can at all)."""
    if pack is False:
        return "multiplies by packed copies, which pack=False turns off"
    if not bf16_matmul_supported():
        return ("needs a CPU that multiplies in bfloat16 natively (AMX or AVX512-BF16) and a torch built with "
                "oneDNN; here it would be emulated, slower than float32: use float32")
    if core is not None and (not supports(core) or packed_weights(core, always=True, dtype=torch.bfloat16) is None):
        return ("applies to a float32 Llama core on the CPU whose weights take at most fast_decode.PACK_MAX_BYTES; "
                "use float32 for this one")
    return ""


AUTO_BF16_MIN_ROWS = 8
AUTO_BF16_MIN_BYTES = 96 * 2**20
"""Where :func:`fastest_matmul_dtype` picks bfloat16 for a decoding loop of a given row count: at
:data:`AUTO_BF16_MIN_ROWS` rows or more, or at any row count for a core whose float32 weights take at least
:data:`AUTO_BF16_MIN_BYTES`. Below both, a step multiplies a row or two by weights few enough to read fast in
float32, gains nothing from bfloat16 and pays for the rounding. Eager text decoding on one thread of an AMX Xeon
(``python benchmarks/matmul_dtype_rows.py``, benchmarks/RESULTS.md) ran in bfloat16 0.79x as fast at 2 rows and
1.04x at 8 over 21 MiB of weights, 0.91x at 2 rows and 1.29x at 8 over 54 MiB, and 1.15x at one row over 105 MiB."""


def fastest_matmul_dtype(core: nn.Module, rows: int | None = None) -> torch.dtype:
    """bfloat16 where a step over ``core`` can multiply in it natively (:func:`bf16_matmul_problem` finds nothing)
    and, for a loop that decodes ``rows`` rows, gains by it (:data:`AUTO_BF16_MIN_ROWS`); else float32. ``rows=None``
    (the server's ``--matmul-dtype auto``, whose batch fills up, and scoring passes of many tokens per row) asks only
    whether it can."""
    if bf16_matmul_problem(core):
        return torch.float32
    if rows is not None and rows < AUTO_BF16_MIN_ROWS and _weight_bytes(_weights(core)) < AUTO_BF16_MIN_BYTES:
        return torch.float32
    return torch.bfloat16


class LlamaDecodeStep:
    """Decode one token per row of a core for which :func:`supports` holds, over static per-layer key/value tensors
    ``(R, kv_heads, C, head_dim)`` (a :class:`transformers.StaticCache` that a prefill filled, or the scheduler's
    slot cache): each row writes its new key and value at its own column and attends where ``mask`` says.
    ``pack``: multiply by the packed copies where this CPU gains by them (``None``, :data:`PACK_BY_DEFAULT`),
    wherever they apply (``True``), or never (``False``). ``matmul_dtype=torch.bfloat16`` multiplies by bfloat16
    packed copies (``pack`` must not be ``False``); :class:`~anygen.errors.InvalidArgumentError` where they do not
    apply (:func:`bf16_matmul_problem`)."""

    def __init__(self, core: nn.Module, cache: object, pack: bool | None = None,
                 matmul_dtype: torch.dtype = torch.float32) -> None:
        config = core.config
        self.core, self.cache = core, cache
        self.layers = list(core.model.layers[: config.num_hidden_layers])
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.scaling = self.layers[0].self_attn.scaling if self.layers else self.head_dim ** -0.5
        if matmul_dtype == torch.float32:
            self.packs = None if pack is False else packed_weights(core, always=bool(pack))
            return
        problem = bf16_matmul_problem(core, pack) if matmul_dtype == torch.bfloat16 else \
            f"is not one of {', '.join(MATMUL_DTYPES)}"
        if problem:
            raise InvalidArgumentError(f"matmul_dtype={matmul_dtype} {problem}")
        self.packs = packed_weights(core, always=True, dtype=matmul_dtype)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor,
                 rows: slice | None = None) -> torch.Tensor:
        """Next-token logits ``(R, V)``: :meth:`hidden` times the core's output matrix (a caller that knows which
        ids a step may emit passes that range as ``rows`` and gets ``(R, len(range))``)."""
        return self.head(self.hidden(tokens, positions, columns, mask), rows)

    def head(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """``x`` times the output matrix's ``rows`` (all by default)."""
        weight = self.core.lm_head.weight
        if self._packed():
            return self.packs.linear(x, (weight,), rows)
        return F.linear(x, weight if rows is None else weight[rows])

    def project(self, x: torch.Tensor, *weights: torch.Tensor) -> list[torch.Tensor]:
        """``[F.linear(x, w) for w in weights]``: one packed product over the weights stacked, where packing
        applies."""
        if self._packed():
            return list(self.packs.linear(x, weights).split([w.shape[0] for w in weights], -1))
        return [F.linear(x, w) for w in weights]

    def _packed(self) -> bool:
        return self.packs is not None and not torch.is_grad_enabled()  # a packed product has no backward

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                last: torch.Tensor | None = None) -> torch.Tensor:
        """Run whole prompts: ``tokens`` and ``positions`` ``(R, T)`` go to the cache's columns ``[0, T)``;
        ``mask`` ``(R, 1, T, T)`` says which of them each token attends to (every token must attend to one at
        least, e.g. itself). Returns the next-token logits ``(R, V)`` after each row's position ``last`` ``(R,)``
        (default: the last column)."""
        columns = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
        return self.head(self.hidden(tokens, positions, columns, mask, last))

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor,
               last: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's normalised output ``(R, H)`` at each row's position ``last`` (default: its last), the
        input of the output matrix.

        Args:
            tokens: ``(R, T)`` ids (one per row when decoding); positions: ``(R, T)`` their rotary positions.
            columns: ``(R,)`` the cache column each row's first token's key and value go to (the others follow).
            mask: ``(R, 1, T, C)`` bool, True where a token may attend (its own column included). Only the cache's
                first ``C`` columns are read, so a caller whose rows use few columns of a long cache passes a
                short mask.
        """
        model, project = self.core.model, self.project
        x = model.embed_tokens(tokens)  # (R, T, H)
        cos, sin = model.rotary_emb(x, position_ids=positions)
        half = sin.shape[-1] // 2
        cos, sin = cos[:, None], torch.cat((-sin[..., :half], sin[..., half:]), -1)[:, None]  # (R, 1, T, D)
        rows, width, length = x.shape[0], x.shape[1], mask.shape[-1]
        at = columns.view(rows, 1, 1, 1)
        if width > 1:
            at = at + torch.arange(width, device=at.device).view(1, 1, width, 1)
        index = at.expand(rows, self.kv_heads, width, self.head_dim)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = project(_rms_norm(x, layer.input_layernorm), attn.q_proj.weight, attn.k_proj.weight,
                              attn.v_proj.weight)
            q = q.reshape(rows, width, self.heads, self.head_dim).transpose(1, 2)
            k = k.reshape(rows, width, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.reshape(rows, width, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            store = self.cache.layers[i]
            store.keys.scatter_(2, index, k)
            store.values.scatter_(2, index, v)
            o = F.scaled_dot_product_attention(q, store.keys[:, :, :length], store.values[:, :, :length],
                                               attn_mask=mask, scale=self.scaling,
                                               enable_gqa=self.heads != self.kv_heads)
            x = x + project(o.transpose(1, 2).reshape(rows, width, -1), attn.o_proj.weight)[0]
            gate, up = project(_rms_norm(x, layer.post_attention_layernorm), mlp.gate_proj.weight, mlp.up_proj.weight)
            x = x + project(F.silu(gate) * up, mlp.down_proj.weight)[0]
        x = x[:, -1] if last is None else x[torch.arange(rows, device=x.device), last]
        return _rms_norm(x, model.norm)  # (R, H)


_compiled_hidden: dict[str, Callable[..., torch.Tensor]] = {}  # one per device type


def compiled_step(core: nn.Module, cache: object) -> Callable[..., torch.Tensor]:
    """A :class:`LlamaDecodeStep` whose :meth:`~LlamaDecodeStep.hidden` is ``torch.compile``-d over the weights in
    place (the output matrix, whole or the ``rows=`` a caller passes, runs eagerly after it, packed on a CPU). Every
    step shares one compiled function, so a trace is reused by every later step and call with the same core (after
    a second batch size or cache length, torch traces once more with symbolic sizes, which then serves them all).

    On a CPU the compiled graph is launched from C++ as well (inductor's ``cpp_wrapper``): the same kernels and
    numbers, without a Python call per kernel and tensor view, a few hundred microseconds less per step for a small
    core (benchmarks/RESULTS.md, decode speed)."""
    device = core.lm_head.weight.device.type
    if device not in _compiled_hidden:
        options = {"cpp_wrapper": True} if device == "cpu" else None
        _compiled_hidden[device] = torch.compile(LlamaDecodeStep.hidden, options=options)
    hidden = _compiled_hidden[device]
    traced, step = LlamaDecodeStep(core, cache, pack=False), LlamaDecodeStep(core, cache)

    def call(*args: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        return step.head(hidden(traced, *args), rows)
    return call
