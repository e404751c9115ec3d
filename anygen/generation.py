"""The sampler: grammar-constrained, per-modality, guided decoding over a KV cache.

Generation is a few small functions over explicit state (in the spirit of gpt-fast):

* :class:`Grammar` turns each row's state (text / inside a span of modality m / done) into an allowed-token mask.
  ``<|image|>`` opens a span of exactly ``tokens_for(size)`` codes and then forces ``<|/image|>``; variable-length
  spans (audio) may close at any frame boundary; codebooks come in order inside a frame; a span is never opened
  when it cannot fit in the remaining budget. All of it derives from the tokenizers' metadata.
* :func:`classifier_free_guidance` is the one CFG formula, applied only to rows inside a guided span.
* :func:`sample_tokens` samples every row with the settings of the modality that row is in.
* :class:`KVRunner` drives the transformers core over a preallocated static KV cache.

Rows of one batch may sit in different modalities at the same step. With a ``torch.Generator`` the output is a
pure function of the inputs and the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import StaticCache

from anygen.errors import GenerationError, InvalidArgumentError, check_range
from anygen.processor import pad_rows
from anygen.vocab import TEXT, Vocab

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token inside one modality.

    Args:
        temperature: > 0 when sampling; logits are divided by it.
        top_k: keep the k most likely tokens (0 = all).
        top_p: nucleus threshold in (0, 1] (1 = off).
        do_sample: ``False`` = greedy (temperature, top_k and top_p are then ignored).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.do_sample:
            check_range("temperature", self.temperature, 0.0, None, low_inclusive=False)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidArgumentError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables it)")


@dataclass(frozen=True)
class SpanRule:
    """Grammar of one modality's spans, derived from its tokenizer (see :func:`span_rules`)."""

    modality: str
    begin_id: int
    end_id: int
    starts: tuple[int, ...]  # first global id of each codebook
    codebook_size: int
    min_len: int  # codes, a multiple of len(starts)
    max_len: int


def span_rules(vocab: Vocab, tokenizers: Mapping[str, Any], item_shapes: Mapping[str, Any]) -> list[SpanRule]:
    """One :class:`SpanRule` per modality of ``vocab``.

    Args:
        item_shapes: per modality, the shape handed to ``tokens_for`` -- e.g. ``{"image": (64, 64),
            "audio": 32000}``; for variable-length modalities it is the *maximum* size of a span.
    """
    rules = []
    for spec in vocab.modalities:
        if spec.name not in item_shapes:
            raise InvalidArgumentError(f"item_shapes has no entry for modality {spec.name!r}")
        tok = tokenizers[spec.name]
        n = int(tok.tokens_for(item_shapes[spec.name]))
        k = spec.num_codebooks
        if n <= 0 or n % k:
            raise InvalidArgumentError(f"{spec.name}: tokens_for gave {n}, not a positive multiple of {k} codebooks")
        rules.append(SpanRule(spec.name, vocab.begin_id(spec.name), vocab.end_id(spec.name),
                              tuple(vocab.span(spec.name, c).start for c in range(k)), spec.codebook_size,
                              k if tok.variable_length else n, n))
    return rules


@dataclass
class GrammarState:
    """Per-row state, all ``(B,)`` long tensors. ``mode``: 0 text, 1..M inside modality m's span, M+1 done."""

    mode: torch.Tensor
    pos: torch.Tensor  # codes emitted in the current span
    limit: torch.Tensor  # codes allowed in the current span


class Grammar:
    """Allowed-token masks and state updates for interleaved generation.

    Args:
        vocab: the id layout.
        rules: one :class:`SpanRule` per modality, in vocab order.
        open_modalities: modalities a row may *open* while generating (spans already open in a prompt are
            always finished); default all.
    """

    def __init__(self, vocab: Vocab, rules: Sequence[SpanRule], open_modalities: Sequence[str] | None = None):
        names = [r.modality for r in rules]
        if names != vocab.modality_names[1:]:
            raise InvalidArgumentError(f"rules must cover {vocab.modality_names[1:]} in order, got {names}")
        unknown = set(open_modalities or ()) - set(names)
        if unknown:
            raise InvalidArgumentError(f"open_modalities has unknown modality(ies) {sorted(unknown)}; valid: {names}")
        self.vocab, self.rules = vocab, list(rules)
        m = len(rules)
        self.done_mode = m + 1
        v = vocab.size
        # Mask table rows: 0 = text, then one row per (modality, codebook), then an empty row (span full).
        text_row = vocab.mask(TEXT)
        text_row[vocab.eos_id] = True
        text_row[[r.begin_id for r in rules]] = True
        rows, row_base = [text_row], [0]
        for r in rules:
            row_base.append(len(rows))
            for start in r.starts:
                row = torch.zeros(v, dtype=torch.bool)
                row[start: start + r.codebook_size] = True
                rows.append(row)
        row_base.append(0)
        pad_row = torch.zeros(v, dtype=torch.bool)
        pad_row[vocab.pad_id] = True
        self.empty_row, self.done_row = len(rows), len(rows) + 1
        self.table = torch.stack(rows + [torch.zeros(v, dtype=torch.bool), pad_row])  # (rows, V)
        per_mode = lambda values, fill: torch.tensor([fill, *values, fill], dtype=torch.long)  # noqa: E731
        self.row_base = torch.tensor(row_base, dtype=torch.long)
        self.num_codebooks = per_mode([len(r.starts) for r in rules], 1)
        self.min_len = per_mode([r.min_len for r in rules], 0)
        self.max_len = per_mode([r.max_len for r in rules], 0)
        self.end_ids = per_mode([r.end_id for r in rules], vocab.pad_id)
        self.begin_ids = torch.tensor([r.begin_id for r in rules], dtype=torch.long)
        self.begin_to_mode = torch.zeros(v, dtype=torch.long)
        self.begin_to_mode[self.begin_ids] = torch.arange(1, m + 1)
        allowed = names if open_modalities is None else list(open_modalities)
        self.may_open = torch.tensor([n in allowed for n in names], dtype=torch.bool)

    def mode_of(self, modality: str) -> int:
        return self.vocab.modality_names.index(modality)

    def initial_state(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> GrammarState:
        """State after each prompt: a prompt that ends inside an open span (e.g. with ``<|image|>``) starts there."""
        modes, positions, limits = [], [], []
        for row, ids in enumerate(prompts):
            mode, pos = self._tail_span(ids)
            limit = 0
            if mode:
                k = int(self.num_codebooks[mode])
                limit = min(int(self.max_len[mode]), pos + (max_new_tokens - 1) // k * k)
                if limit < int(self.min_len[mode]) or pos > limit:
                    raise InvalidArgumentError(
                        f"row {row}: the open {self.rules[mode - 1].modality} span needs "
                        f"{int(self.min_len[mode]) - pos + 1} more tokens but max_new_tokens={max_new_tokens}")
            modes.append(mode)
            positions.append(pos)
            limits.append(limit)
        return GrammarState(*(torch.tensor(x, dtype=torch.long) for x in (modes, positions, limits)))

    def _tail_span(self, ids: Sequence[int]) -> tuple[int, int]:
        ends = set(self.end_ids[1:-1].tolist())
        for back, tok in enumerate(reversed(ids)):
            if tok in ends:
                return 0, 0
            mode = int(self.begin_to_mode[tok])
            if mode:
                return mode, back
        return 0, 0

    def allowed(self, state: GrammarState, remaining: int) -> torch.Tensor:
        """``(B, V)`` bool mask of the tokens each row may emit when ``remaining`` tokens are left (this one too)."""
        mode, pos, limit = state.mode, state.pos, state.limit
        b = mode.shape[0]
        k = self.num_codebooks[mode]
        in_span = (mode > 0) & (mode < self.done_mode)
        code_row = self.row_base[mode] + pos % k
        row = torch.where(in_span & (pos < limit), code_row, torch.full_like(mode, self.empty_row))
        row = torch.where(mode == 0, 0, row)
        row = torch.where(mode == self.done_mode, self.done_row, row)
        allowed = self.table[row]  # (B, V)
        end_ok = in_span & (pos >= self.min_len[mode]) & (pos % k == 0)
        rows = torch.arange(b)
        allowed[rows, self.end_ids[mode]] |= end_ok
        # Open a span only if begin + min codes + end fit in what is left.
        fits = self.may_open & (self.min_len[1:-1] + 2 <= remaining)  # (M,)
        allowed[:, self.begin_ids] = (mode == 0)[:, None] & fits[None, :]
        return allowed

    def advance(self, state: GrammarState, tokens: torch.Tensor, remaining: int) -> GrammarState:
        """State after each row emitted ``tokens`` (``(B,)``), ``remaining`` counting this token."""
        mode, pos, limit = state.mode, state.pos, state.limit
        in_span = (mode > 0) & (mode < self.done_mode)
        opened_mode = self.begin_to_mode[tokens]
        opened = (mode == 0) & (opened_mode > 0)
        closed = in_span & (tokens == self.end_ids[mode])
        finished = (mode == 0) & (tokens == self.vocab.eos_id)
        k = self.num_codebooks[opened_mode]
        budget = remaining - 2  # tokens left after this begin, minus the end token
        new_limit = torch.minimum(self.max_len[opened_mode], torch.div(budget, k, rounding_mode="floor") * k)
        new_mode = torch.where(opened, opened_mode, torch.where(closed, 0, mode))
        new_mode = torch.where(finished, self.done_mode, new_mode)
        new_pos = torch.where(in_span & ~closed, pos + 1, torch.zeros_like(pos))
        new_limit = torch.where(opened, new_limit, torch.where(closed, 0, limit))
        return GrammarState(new_mode, new_pos, new_limit)


# ---- guidance and sampling -----------------------------------------------------------------------------------


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
                             uncond_all: torch.Tensor | None = None, image_scale: float = 1.0) -> torch.Tensor:
    """The one CFG formula (on logits).

    One term: ``cond + (scale - 1) * (cond - uncond)``, i.e. ``uncond + scale * (cond - uncond)`` written so that
    ``scale == 1`` returns ``cond`` exactly. With ``uncond_all`` (editing, InstructPix2Pix-style), ``uncond``
    keeps the source image but drops the instruction and ``uncond_all`` drops both::

        cond + (scale - 1) (cond - uncond) + (image_scale - 1) (uncond - uncond_all)
    """
    out = cond + (scale - 1.0) * (cond - uncond)
    if uncond_all is not None:
        out = out + (image_scale - 1.0) * (uncond - uncond_all)
    return out


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance for one call.

    Args:
        uncond_prompts: per row, the prompt ids with the condition dropped (see ``processor.drop_condition``).
        scale: guidance scale (1 = off).
        modalities: guide only rows inside spans of these modalities.
        interval: guide only while ``pos / span_length`` lies in ``[start, end)`` (LlamaGen's cfg interval).
        uncond_all_prompts / image_scale: optional second term for editing (prompts with image and text dropped).
    """

    uncond_prompts: Sequence[Sequence[int]]
    scale: float = 2.0
    modalities: tuple[str, ...] = ("image",)
    interval: tuple[float, float] = (0.0, 1.0)
    uncond_all_prompts: Sequence[Sequence[int]] | None = None
    image_scale: float = 1.0

    def __post_init__(self) -> None:
        check_range("guidance_scale", self.scale, 0.0, None)
        check_range("image_guidance_scale", self.image_scale, 0.0, None)
        lo, hi = self.interval
        if not 0.0 <= lo < hi <= 1.0:
            raise InvalidArgumentError(f"guidance interval={self.interval} must satisfy 0 <= start < end <= 1")

    @property
    def branches(self) -> int:
        return 1 + (self.scale != 1.0 or self.uncond_all_prompts is not None) + (self.uncond_all_prompts is not None)


def sample_tokens(logits: torch.Tensor, allowed: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, greedy: torch.Tensor, noise: torch.Tensor, filtered: bool) -> torch.Tensor:
    """Sample one token per row; every setting is a ``(B,)`` tensor so rows may use different ones.

    ``noise`` is ``(B, V)`` Exponential(1) draws: ``argmax(p / noise)`` is a sample from ``p`` with no host sync.
    ``filtered=False`` skips the sort that top-k / top-p need.
    """
    logits = logits.float().masked_fill(~allowed, -math.inf)  # (B, V)
    choice = logits.argmax(-1)
    scaled = logits / temperature[:, None]
    if filtered:
        scaled = _top_k_top_p(scaled, top_k, top_p)
    probs = torch.softmax(scaled, -1)
    sampled = (probs / noise).argmax(-1)
    return torch.where(greedy, choice, sampled)


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(-1, descending=True)  # (B, V)
    v = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=v), v)
    kth = sorted_logits.gather(-1, (k - 1)[:, None])
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, -math.inf)
    probs = torch.softmax(sorted_logits, -1)
    beyond = probs.cumsum(-1) - probs > top_p[:, None]  # always keeps the first token
    sorted_logits = sorted_logits.masked_fill(beyond, -math.inf)
    return torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)


def draw_noise(shape: tuple[int, int], generator: Generators) -> torch.Tensor:
    """``(B, V)`` Exponential(1) noise from one generator, or one generator per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.empty(shape).exponential_(1.0, generator=generator)
    return torch.stack([torch.empty(shape[1]).exponential_(1.0, generator=g) for g in generator])


# ---- the core over a static KV cache ----------------------------------------------------------------------


class KVRunner:
    """Prefill and single-token decode of a transformers causal LM over a preallocated static cache.

    Rows are left-padded, so every row writes the same cache slot at each step; each row keeps its own
    position ids (padding does not count).
    """

    def __init__(self, core: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int,
                 max_new_tokens: int) -> None:
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
        self.mask = torch.ones(len(ids), total, dtype=torch.long, device=device)  # (R, T + new)
        self.mask[:, : self.prompt_len] = mask
        self.positions = (mask.sum(-1) - 1).to(device)  # (R,) position of each row's last token
        self.cache = StaticCache(config=core.config, max_cache_len=total)
        self.step_index = 0

    def prefill(self) -> torch.Tensor:
        mask = self.mask[:, : self.prompt_len]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.core(input_ids=self.ids.to(self.device), attention_mask=mask, position_ids=position_ids,
                        past_key_values=self.cache, use_cache=True, logits_to_keep=1,
                        cache_position=torch.arange(self.prompt_len, device=self.device))
        return out.logits[:, -1]  # (R, V)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``(R,)``; returns next-token logits ``(R, V)``."""
        slot = self.prompt_len + self.step_index
        self.step_index += 1
        self.positions = self.positions + 1
        out = self.core(input_ids=tokens[:, None].to(self.device), attention_mask=self.mask[:, : slot + 1],
                        position_ids=self.positions[:, None], past_key_values=self.cache, use_cache=True,
                        cache_position=torch.tensor([slot], device=self.device))
        return out.logits[:, -1]


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
                  generator: Generators) -> None:
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise InvalidArgumentError("prompts must hold at least one non-empty row of ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != len(prompts):
        raise InvalidArgumentError(
            f"generator is a list of {len(generator)} but the batch has {len(prompts)} rows; pass one per row")
    if guidance is not None:
        for name in ("uncond_prompts", "uncond_all_prompts"):
            value = getattr(guidance, name)
            if value is not None and len(value) != len(prompts):
                raise InvalidArgumentError(f"guidance.{name} has {len(value)} rows, the batch {len(prompts)}")


def decode_steps(core: torch.nn.Module, vocab: Vocab, rules: Sequence[SpanRule], prompts: Sequence[Sequence[int]],
                 *, max_new_tokens: int, sampling: Mapping[str, SamplingParams] | None = None,
                 guidance: Guidance | None = None, open_modalities: Sequence[str] | None = None,
                 generator: Generators = None) -> Iterator[Step]:
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
    """
    # 1. Validate everything before allocating caches.
    _check_inputs(prompts, max_new_tokens, guidance, generator)
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
    runner = KVRunner(core, rows, vocab.pad_id, max_new_tokens)
    # 3. Prefill, then one token per step.
    with torch.inference_mode():
        logits = runner.prefill()
        for index in range(max_new_tokens):
            remaining = max_new_tokens - index
            logits = logits.float()
            if not torch.isfinite(logits).all():
                raise GenerationError(f"the core produced non-finite logits at step {index}; check the weights "
                                      "(e.g. fp16 overflow) before sampling from them")
            step_logits = logits[:b]
            if branches > 1:
                step_logits = _guide(logits, b, branches, guidance, state, guided_modes)
            allowed = grammar.allowed(state, remaining)
            mode = state.mode
            tokens = sample_tokens(step_logits, allowed, tables["temperature"][mode], tables["top_k"][mode],
                                   tables["top_p"][mode], tables["greedy"][mode],
                                   draw_noise(tuple(step_logits.shape), generator), tables["filtered"])
            after = grammar.advance(state, tokens, remaining)
            yield Step(index, tokens, state, after)
            state = after
            if index + 1 == max_new_tokens or bool((state.mode == grammar.done_mode).all()):
                return
            logits = runner.decode(tokens.repeat(branches))


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
