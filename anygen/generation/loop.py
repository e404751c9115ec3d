"""The decoding loop: prefill, then one grammar-constrained, guided, per-modality sample per step.

Generation is a few small functions over explicit state (in the spirit of gpt-fast): :class:`KVRunner` drives the
transformers core over a preallocated static KV cache, :class:`~anygen.generation.grammar.Grammar` masks what each
row may emit, :func:`~anygen.generation.sampling.classifier_free_guidance` guides rows inside guided spans, and
:func:`~anygen.generation.sampling.scale_logits` / :func:`~anygen.generation.sampling.pick_tokens` sample each row
with the settings of the modality it is in (non-finite logits, raw or guided and scaled, stop generation with a
:class:`~anygen.errors.GenerationError`). With a ``torch.Generator`` the output is a pure function of the inputs and
the seed.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import StaticCache

from anygen.errors import GenerationError, InvalidArgumentError
from anygen.generation import fast_decode
from anygen.generation.grammar import Grammar, GrammarState, SpanRule, span_rules
from anygen.processor import pad_rows
from anygen.generation.sampling import (Generators, Guidance, NoiseSource, SamplingParams, classifier_free_guidance,
                                       pick_tokens, scale_logits)
from anygen.vocab import Vocab

__all__ = ["Grammar", "GrammarState", "SpanRule", "span_rules", "Guidance", "SamplingParams",
           "classifier_free_guidance", "KVRunner", "Step", "GenerationOutput", "decode_steps", "generate"]


# ---- the core over a static KV cache ----------------------------------------------------------------------

CACHE_BUCKET = 64  # compiled decoding rounds the cache length up to a multiple of this


class KVRunner:
    """Prefill and single-token decode of a transformers causal LM over a preallocated static cache.

    Rows are left-padded, so every row writes the same cache slot at each step; each row keeps its own
    position ids (padding does not count). ``matmul_dtype``: as :func:`decode_steps`.
    """

    def __init__(self, core: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int,
                 max_new_tokens: int, compile: bool = False, matmul_dtype: torch.dtype = torch.float32) -> None:
        check_matmul_dtype(core, matmul_dtype, compile)
        ids, mask = pad_rows(prompts, pad_id, "left")  # (R, T)
        self.core, self.ids, self.prompt_len = core, ids, ids.shape[1]
        total = self.prompt_len + max_new_tokens
        limit = getattr(core.config, "max_position_embeddings", None)
        if limit is not None and total > limit:
            raise InvalidArgumentError(
                f"prompt ({self.prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
                f"model's context of {limit} tokens; shorten the prompt or lower max_new_tokens")
        device = next(core.parameters()).device
        self.device = device
        if compile:  # a few cache lengths for all prompt lengths, so a compiled step is seldom traced again
            total = min(-(-total // CACHE_BUCKET) * CACHE_BUCKET, limit or total)
        check_memory(core, len(ids), total, self.prompt_len, device)
        self.mask = torch.ones(len(ids), total, dtype=torch.long, device=device)  # (R, cache length)
        self.mask[:, : self.prompt_len] = mask
        self.positions = (mask.sum(-1) - 1).to(device)  # (R,) position of each row's last token
        self.cache = StaticCache(config=core.config, max_cache_len=total)
        self.cache_key = cache_argument(core)
        self.step_index = 0
        # Llama cores decode through the lean step of fast_decode (the same function, a fraction of the Python
        # overhead); others through their forward. Every decode call has the same shapes (the mask always spans
        # the whole cache; causality hides the future slots), so a compiled step is traced once per batch size
        # and cache length.
        self.fast = fast_decode.supports(core)
        if self.fast:
            self.columns = torch.arange(total, device=device)
            self.key_mask = self.mask.bool()
            self.eager = fast_decode.LlamaDecodeStep(core, self.cache, matmul_dtype=matmul_dtype)
            empty = torch.zeros(len(ids), self.eager.kv_heads, 1, self.eager.head_dim, dtype=core.lm_head.weight.dtype,
                                device=device)
            for layer in self.cache.layers:  # the fast step writes into the cache's tensors: allocate them now
                layer.lazy_initialization(empty, empty)
            self.step = fast_decode.compiled_step(core, self.cache) if compile else self.eager
        else:
            self.forward = torch.compile(_decode_forward, dynamic=False) if compile else _decode_forward

    def prefill(self) -> torch.Tensor:
        mask = self.mask[:, : self.prompt_len]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.fast:  # causal over the row's own tokens; a padding token attends to itself alone
            width = self.prompt_len
            causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
            own = torch.eye(width, dtype=torch.bool, device=self.device)
            attend = causal & (mask.bool().to(self.device)[:, None, :] | own)  # (R, T, T)
            return self.eager.prefill(self.ids.to(self.device), position_ids.to(self.device), attend[:, None])
        out = self.core(input_ids=self.ids.to(self.device), attention_mask=mask, position_ids=position_ids,
                        **{self.cache_key: self.cache}, use_cache=True, logits_to_keep=1,
                        cache_position=torch.arange(self.prompt_len, device=self.device))
        return out.logits[:, -1]  # (R, V)

    def decode(self, tokens: torch.Tensor, ids: slice | None = None) -> torch.Tensor:
        """Feed one token per row ``(R,)``; returns next-token logits ``(R, V)``.

        ``ids``: the only ids the next token may be (e.g. an image span's codes). The lean step then multiplies
        the output matrix's rows for those ids alone, and the other logits are ``-inf``; it is the largest matrix
        of a small core, so a modality span's steps read a good part fewer weight bytes. Other cores compute
        every logit."""
        slot = torch.tensor([self.prompt_len + self.step_index], device=self.device)
        self.step_index += 1
        self.positions = self.positions + 1
        if self.fast:
            mask = (self.key_mask & (self.columns <= slot))[:, None, None, :]  # (R, 1, 1, total)
            args = (tokens[:, None].to(self.device), self.positions[:, None], slot.expand(len(mask)), mask)
            if ids is None:
                return self.step(*args)
            head = self.core.lm_head.weight
            logits = head.new_full((len(mask), head.shape[0]), -math.inf)
            logits[:, ids] = self.step(*args, rows=ids)
            return logits
        return self.forward(self.core, tokens[:, None].to(self.device), self.mask, self.positions[:, None],
                            self.cache, slot, self.cache_key)


def decode_bytes(core: torch.nn.Module, rows: int, length: int, prompt_length: int = 0) -> int:
    """About the most bytes a decode of ``rows`` rows over a cache of ``length`` tokens holds at once: the key/value
    cache; the prefill's activations over ``prompt_length`` tokens per row (the MLP's, the attention scores); and
    a few ``(rows, vocab)`` float32 copies of the logits (raw, guided, scaled, masked)."""
    config = core.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    size = core.get_input_embeddings().weight.dtype.itemsize
    cache = 2 * config.num_hidden_layers * rows * kv_heads * length * head_dim * size
    intermediate = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    prefill = rows * prompt_length * (3 * intermediate + 4 * config.hidden_size + heads * prompt_length) * size
    return cache + prefill + 4 * rows * config.vocab_size * 4


def free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (a CPU's ``MemAvailable``), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as info:
                for line in info:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_memory(core: torch.nn.Module, rows: int, length: int, prompt_length: int, device: torch.device) -> None:
    """An error before anything is allocated when a decode would need more memory than ``device`` has free (a
    process that runs out is killed, with whatever it held), naming what to lower."""
    need, free = decode_bytes(core, rows, length, prompt_length), free_bytes(device)
    if free is not None and need > free:
        raise InvalidArgumentError(
            f"decoding {rows} rows of up to {length} tokens needs about {need / 2**30:.1f} GiB (key/value cache, "
            f"prefill and logits), more than the {free / 2**30:.1f} GiB free on {device}: split the call into fewer "
            "rows (a call decodes prompts x images x candidates rows, times 2-3 with guidance) or make them shorter")


def cache_argument(core: torch.nn.Module) -> str:
    """The keyword the core's ``forward`` takes its KV cache by: ``cache`` in newer transformers releases,
    ``past_key_values`` before (and in models that still use that name)."""
    return "cache" if "cache" in inspect.signature(core.forward).parameters else "past_key_values"


def _decode_forward(core: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                    cache: StaticCache, slot: torch.Tensor, cache_key: str) -> torch.Tensor:
    out = core(input_ids=tokens, attention_mask=mask, position_ids=positions, **{cache_key: cache},
               use_cache=True, cache_position=slot)
    return out.logits[:, -1]  # (R, V)


# ---- the decoding loop ---------------------------------------------------------------------------------------


@dataclass
class Step:
    """One decoding step: the token each row emitted and the grammar state before and after it."""

    index: int
    tokens: torch.Tensor  # (B,)
    before: GrammarState
    after: GrammarState


@dataclass
class GenerationOutput:
    """Generated ids per row (prompt excluded, stopping after ``<|eos|>``) and whether the row finished."""

    sequences: list[list[int]]
    finished: list[bool] = field(default_factory=list)


def _mode_table(values: Sequence[Any], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([*values, values[0]], dtype=dtype)  # the done mode samples like text


def _sampling_tables(vocab: Vocab, sampling: Mapping[str, SamplingParams] | None) -> dict[str, torch.Tensor]:
    sampling = dict(sampling or {})
    unknown = set(sampling) - set(vocab.modality_names)
    if unknown:
        raise InvalidArgumentError(f"sampling has unknown modality(ies) {sorted(unknown)}; valid: "
                                   f"{vocab.modality_names}")
    params = [sampling.get(name, SamplingParams()) for name in vocab.modality_names]
    return {"temperature": _mode_table([p.temperature if p.do_sample else 1.0 for p in params], torch.float32),
            "top_k": _mode_table([p.top_k for p in params], torch.long),
            "top_p": _mode_table([p.top_p for p in params], torch.float32),
            "greedy": _mode_table([not p.do_sample for p in params], torch.bool),
            "filtered": any(p.do_sample and (p.top_k > 0 or p.top_p < 1.0) for p in params)}


def _check_inputs(prompts: Sequence[Sequence[int]], max_new_tokens: int, guidance: Guidance | None,
                  generator: Generators, min_new_tokens: int = 0) -> None:
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise InvalidArgumentError("prompts must hold at least one non-empty row of ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) or \
            not 0 <= min_new_tokens <= max_new_tokens:
        raise InvalidArgumentError(f"min_new_tokens={min_new_tokens!r} must be an integer in [0, max_new_tokens="
                                   f"{max_new_tokens}]")
    check_generator_type(generator)
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != len(prompts):
        raise InvalidArgumentError(
            f"generator is a list of {len(generator)} but the batch has {len(prompts)} rows; pass one per row")
    if guidance is not None:
        for name in ("uncond_prompts", "uncond_all_prompts"):
            value = getattr(guidance, name)
            if value is not None and len(value) != len(prompts):
                raise InvalidArgumentError(f"guidance.{name} has {len(value)} rows, the batch {len(prompts)}")


def check_generator_type(generator: Generators) -> None:
    """``generator`` is None, a ``torch.Generator`` or a list / tuple of them; else an error naming the argument."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        kind = type(generator).__name__ if not isinstance(generator, (list, tuple)) else \
            f"a {type(generator).__name__} holding {sorted({type(g).__name__ for g in generator})}"
        raise InvalidArgumentError(f"generator must be a torch.Generator or a list of them, got {kind}; "
                                   "e.g. torch.Generator().manual_seed(0)")


def check_matmul_dtype(core: torch.nn.Module, matmul_dtype: torch.dtype, compile: bool = False) -> None:
    """:class:`~anygen.errors.InvalidArgumentError` naming ``matmul_dtype`` where the decoding loop cannot multiply
    in it: anything but float32 and bfloat16, bfloat16 with ``compile`` (the compiled step multiplies in the core's
    dtype) or where :func:`~anygen.generation.fast_decode.bf16_matmul_problem` finds a problem."""
    if matmul_dtype == torch.float32:
        return
    if matmul_dtype != torch.bfloat16:
        problem = f"is not one of {', '.join(fast_decode.MATMUL_DTYPES)}"
    else:
        problem = "cannot run with compile=True (the compiled step multiplies in the core's dtype); use float32" \
            if compile else fast_decode.bf16_matmul_problem(core)
    if problem:
        raise InvalidArgumentError(f"matmul_dtype={matmul_dtype} {problem}")


def decode_steps(core: torch.nn.Module, vocab: Vocab, rules: Sequence[SpanRule], prompts: Sequence[Sequence[int]],
                 *, max_new_tokens: int, sampling: Mapping[str, SamplingParams] | None = None,
                 guidance: Guidance | None = None, open_modalities: Sequence[str] | None = None,
                 generator: Generators = None, compile: bool = False, min_new_tokens: int = 0,
                 matmul_dtype: torch.dtype = torch.float32) -> Iterator[Step]:
    """Yield one :class:`Step` per generated token until every row is done or the budget is spent.

    Args:
        core: a transformers causal LM over ``vocab``.
        rules: from :func:`span_rules` (fixes image sizes and the longest audio span).
        prompts: global ids per row, starting with ``<|bos|>``; a row may end inside an open span.
        max_new_tokens: the budget per row; spans that cannot fit in it are never opened.
        sampling: :class:`SamplingParams` per modality name (``"text"``, ``"image"`` ...).
        guidance: classifier-free guidance (see :class:`Guidance`).
        open_modalities: modalities a row may open (default: all).
        generator: one ``torch.Generator`` for the batch, or one per row.
        min_new_tokens: ``<|eos|>`` is not allowed before this many tokens (as in transformers' ``generate``);
            e.g. 1 so that a caption is never empty.
        compile: ``torch.compile`` the decode step (worth it for long generations: the first call traces the
            core, tens of seconds on a CPU; later calls with the same batch size and cache length reuse it).
        matmul_dtype: ``torch.bfloat16`` runs the prompt's and each step's matrix products in bfloat16, on a CPU
            that multiplies in it natively and a float32 Llama core (:mod:`~anygen.generation.fast_decode`; not
            with ``compile``); the default float32 computes in the core's own dtype.
    """
    # 1. Validate everything before allocating caches.
    _check_inputs(prompts, max_new_tokens, guidance, generator, min_new_tokens)
    check_matmul_dtype(core, matmul_dtype, compile)
    grammar = Grammar(vocab, rules, open_modalities)
    tables = _sampling_tables(vocab, sampling)
    state = grammar.initial_state(prompts, max_new_tokens)
    b = len(prompts)
    # 2. Stack the guidance branches under the conditional rows: [cond; uncond; uncond_all].
    branches = 1 if guidance is None else guidance.branches
    rows = list(prompts)
    if branches > 1:
        rows += list(guidance.uncond_prompts)
    if branches > 2:
        rows += list(guidance.uncond_all_prompts)
    guided_modes = torch.zeros(len(vocab.modality_names) + 1, dtype=torch.bool)
    for name in guidance.modalities if branches > 1 else ():
        guided_modes[grammar.mode_of(name)] = True
    # 3. Prefill, then one token per step. Inference mode is entered per step, never held across a `yield`:
    #    a consumer may resume this generator on another thread (as web servers do).
    with torch.inference_mode():
        runner = KVRunner(core, rows, vocab.pad_id, max_new_tokens, compile, matmul_dtype)
        logits = runner.prefill()
        allowed = eos_after(grammar.allowed(state, max_new_tokens), vocab.eos_id, 0, min_new_tokens)
    noise = NoiseSource(b, generator)
    ids = None  # the ids whose logits this step computed (None: all)
    mask_key = None  # what the last mask was computed from (Grammar.mask_key, and whether <|eos|> was held back)
    for index in range(max_new_tokens):
        remaining = max_new_tokens - index
        with torch.inference_mode():
            logits = logits.float()
            step_logits = logits[:b]
            if branches > 1:
                step_logits = _guide(logits, b, branches, guidance, state, guided_modes)
            mode = state.mode
            scaled = scale_logits(step_logits, allowed, tables["temperature"][mode])
            _check_finite(logits if ids is None else logits[:, ids], scaled, allowed, index, guidance)
            greedy = tables["greedy"][mode]
            draws = None if bool(greedy.all()) else noise(index, scaled.shape[-1])  # greedy steps draw nothing
            tokens = pick_tokens(scaled, allowed, tables["top_k"][mode], tables["top_p"][mode], greedy, draws,
                                 tables["filtered"])
            after = grammar.advance(state, tokens, remaining)
        yield Step(index, tokens, state, after)
        state = after
        if index + 1 == max_new_tokens or bool((state.mode == grammar.done_mode).all()):
            return
        with torch.inference_mode():
            key = (grammar.mask_key(state, remaining - 1), index + 1 < min_new_tokens)
            if key != mask_key:  # else the mask (and its columns) of the last step holds: ~30 small ops saved
                mask_key = key
                allowed = eos_after(grammar.allowed(state, remaining - 1), vocab.eos_id, index + 1, min_new_tokens)
                ids = allowed_columns(allowed)
            logits = runner.decode(tokens if branches == 1 else tokens.repeat(branches), ids)


def allowed_columns(allowed: torch.Tensor) -> slice | None:
    """The narrowest range of ids that holds every id ``allowed`` (``(B, V)``) lets some row emit, when it leaves
    out at least a sixteenth of the vocabulary (inside a modality span: its codes, or its end id; in text: the text
    ids and specials, without the codes of the modalities appended after them); else ``None``."""
    ids = allowed.any(0).nonzero()
    if len(ids) == 0 or int(ids[-1]) + 1 - int(ids[0]) > allowed.shape[1] - allowed.shape[1] // 16:
        return None
    return slice(int(ids[0]), int(ids[-1]) + 1)


def eos_after(allowed: torch.Tensor, eos_id: int, index: int, min_new_tokens: int) -> torch.Tensor:
    """``allowed`` without ``<|eos|>`` while fewer than ``min_new_tokens`` tokens were generated (step ``index``)."""
    if index < min_new_tokens:
        allowed[:, eos_id] = False
    return allowed


def _check_finite(logits: torch.Tensor, scaled: torch.Tensor, allowed: torch.Tensor, index: int,
                  guidance: Guidance | None) -> None:
    """Raise :class:`GenerationError` if the core's logits, or the guided and temperature-scaled logits of the ids
    the grammar allows, hold NaN or +-inf. One host sync per step for both checks."""
    raw_finite = torch.isfinite(logits).all()
    if bool(raw_finite & (torch.isfinite(scaled) | ~allowed).all()):
        return
    if not bool(raw_finite):
        raise GenerationError(f"the core produced non-finite logits at step {index}; check the weights "
                              "(e.g. fp16 overflow) before sampling from them")
    cause = "the temperature" if guidance is None else (f"guidance_scale={guidance.scale}, image_guidance_scale="
                                                        f"{guidance.image_scale} or the temperature")
    peak = float(logits.abs().max())
    raise GenerationError(f"{cause} made the logits non-finite at step {index} (the core's largest |logit| is "
                          f"{peak:.3g}); lower the guidance scales, raise the temperature, or check the weights")


def _guide(logits: torch.Tensor, b: int, branches: int, guidance: Guidance, state: GrammarState,
           guided_modes: torch.Tensor) -> torch.Tensor:
    """CFG on the rows that sit inside a guided span (and inside the guidance interval); others stay conditional."""
    cond, uncond = logits[:b], logits[b: 2 * b]
    uncond_all = logits[2 * b: 3 * b] if branches > 2 else None
    guided = classifier_free_guidance(cond, uncond, guidance.scale, uncond_all, guidance.image_scale)
    frac = state.pos.float() / state.limit.clamp(min=1).float()
    lo, hi = guidance.interval
    active = guided_modes[state.mode] & (frac >= lo) & (frac < hi)
    return torch.where(active[:, None], guided, cond)


def generate(core: torch.nn.Module, vocab: Vocab, rules: Sequence[SpanRule], prompts: Sequence[Sequence[int]],
             **kwargs: Any) -> GenerationOutput:
    """Run :func:`decode_steps` to the end; returns the new ids per row (through ``<|eos|>`` when emitted)."""
    steps = list(decode_steps(core, vocab, rules, prompts, **kwargs))
    tokens = torch.stack([s.tokens for s in steps], 1).tolist()  # (B, S)
    sequences, finished = [], []
    for row in tokens:
        cut = row.index(vocab.eos_id) + 1 if vocab.eos_id in row else len(row)
        sequences.append(row[:cut])
        finished.append(vocab.eos_id in row)
    return GenerationOutput(sequences, finished)
