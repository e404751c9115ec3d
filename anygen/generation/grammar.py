"""The sampler's grammar: which tokens each row may emit next, derived from the tokenizers' metadata.

``<|image|>`` opens a span of exactly ``tokens_for(size)`` codes and then forces ``<|/image|>``; variable-length
spans (audio) may close at any frame boundary up to their maximum; codebooks come in order inside a frame; a span
is never opened when it cannot fit in the remaining budget. The state is three ``(B,)`` tensors per batch, so rows
of one batch may sit in different modalities at the same step, and the masks are built without host syncs.
A fixed-length span may also carry a :class:`SpanLayout` (Emu3's images): forced tokens after the opening and
before the closing, and a row-separator token after every ``row_width`` content codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from anygen.errors import InvalidArgumentError
from anygen.vocab import TEXT, Vocab


@dataclass(frozen=True)
class SpanLayout:
    """Fixed tokens inside a span, around and between its content codes (all *local* codes of one codebook).

    A tokenizer that lays its spans out this way returns one from ``span_layout(item_shape)``; its
    ``tokens_for(item_shape)`` counts every position of the span, fixed tokens included. Codes
    ``[0, content_codes)`` are content the sampler chooses; the higher codes of the codebook are the fixed tokens.

    Example (Emu3: ``h*w<|image token|>``, then rows of ``w`` codes each closed by an end-of-line, then an
    end-of-frame)::

        SpanLayout(content_codes=32768, prefix=(DIGIT_3, STAR, DIGIT_3, IMAGE_TOKEN), row_width=3,
                   row_separator=EOL, suffix=(EOF,))
    """

    content_codes: int
    prefix: tuple[int, ...] = ()
    row_width: int = 0  # content codes per row; 0 = no rows
    row_separator: int | None = None  # local code forced after every row (the last one too)
    suffix: tuple[int, ...] = ()

    def positions(self, length: int) -> list[int]:
        """Per position of a ``length``-token span: the forced local code, or -1 where content goes."""
        body = length - len(self.prefix) - len(self.suffix)
        row = [-1] * self.row_width + [self.row_separator] if self.row_width else [-1]
        if body < 0 or body % len(row) or (self.row_width and self.row_separator is None):
            raise InvalidArgumentError(
                f"a span of {length} tokens does not fit this layout: {len(self.prefix)} prefix + rows of "
                f"row_width={self.row_width} codes and row_separator={self.row_separator} + {len(self.suffix)} suffix")
        return [*self.prefix, *(row * (body // len(row))), *self.suffix]


@dataclass(frozen=True)
class SpanRule:
    """Grammar of one modality's spans, derived from its tokenizer (see :func:`span_rules`).

    ``forced`` (spans with a :class:`SpanLayout`): per position, the global id the span must hold there, or -1
    where a content code goes; empty for spans without fixed tokens.
    """

    modality: str
    begin_id: int
    end_id: int
    starts: tuple[int, ...]  # first global id of each codebook
    codebook_size: int  # content codes per codebook (the ids the sampler may choose)
    min_len: int  # tokens between begin and end, a multiple of len(starts)
    max_len: int
    forced: tuple[int, ...] = ()


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
        starts = tuple(vocab.span(spec.name, c).start for c in range(k))
        layout = tok.span_layout(item_shapes[spec.name]) if hasattr(tok, "span_layout") else None
        size, forced = spec.codebook_size, ()
        if layout is not None:
            size, forced = _layout_ids(spec.name, layout, n, starts, spec.codebook_size, tok.variable_length)
        rules.append(SpanRule(spec.name, vocab.begin_id(spec.name), vocab.end_id(spec.name), starts, size,
                              k if tok.variable_length else n, n, forced))
    return rules


def _layout_ids(name: str, layout: SpanLayout, n: int, starts: tuple[int, ...], codebook_size: int,
                variable_length: bool) -> tuple[int, tuple[int, ...]]:
    """The content-code count and the per-position forced global ids of a laid-out span (checked)."""
    if variable_length or len(starts) != 1:
        raise InvalidArgumentError(f"{name}: a span layout needs a fixed-length span of one codebook")
    positions = layout.positions(n)
    fixed = [c for c in positions if c >= 0]
    if not 0 < layout.content_codes <= codebook_size or any(not layout.content_codes <= c < codebook_size
                                                            for c in fixed):
        raise InvalidArgumentError(f"{name}: layout codes must lie in [content_codes={layout.content_codes}, "
                                   f"codebook_size={codebook_size}), got {sorted(set(fixed))}")
    return layout.content_codes, tuple(c + starts[0] if c >= 0 else -1 for c in positions)


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
        # Forced ids per (mode, position) for laid-out spans, -1 = free; one column when no span has a layout.
        width = max([len(r.forced) for r in rules] + [1])
        self.has_layout = any(r.forced for r in rules)
        self.forced = torch.full((m + 2, width), -1, dtype=torch.long)
        for i, r in enumerate(rules, start=1):
            self.forced[i, : len(r.forced)] = torch.tensor(r.forced, dtype=torch.long)
        allowed = names if open_modalities is None else list(open_modalities)
        self.may_open = torch.tensor([n in allowed for n in names], dtype=torch.bool)
        self._open_costs = (self.min_len[1:-1] + 2).tolist()  # tokens a span needs to open: begin, codes, end

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

    def allowed(self, state: GrammarState, remaining: int | torch.Tensor,
                may_open: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, V)`` bool mask of the tokens each row may emit when ``remaining`` tokens are left (this one too).

        ``remaining`` may be one ``(B,)`` count per row, and ``may_open`` a ``(B, M)`` override of which modalities
        each row may open, so that rows of several generations (same rules) are masked in one call."""
        mode, pos, limit = state.mode, state.pos, state.limit
        b = mode.shape[0]
        k = self.num_codebooks[mode]
        in_span = (mode > 0) & (mode < self.done_mode)
        code_row = self.row_base[mode] + pos % k
        row = torch.where(in_span & (pos < limit), code_row, torch.full_like(mode, self.empty_row))
        row = torch.where(mode == 0, 0, row)
        row = torch.where(mode == self.done_mode, self.done_row, row)
        allowed = self.table[row]  # (B, V)
        rows = torch.arange(b)
        if self.has_layout:
            forced = self.forced[mode, pos.clamp(max=self.forced.shape[1] - 1)]  # (B,) a laid-out span's fixed id
            is_forced = in_span & (pos < limit) & (forced >= 0)
            allowed = allowed & ~is_forced[:, None]
            allowed[rows, forced.clamp(min=0)] |= is_forced
        end_ok = in_span & (pos >= self.min_len[mode]) & (pos % k == 0)
        allowed[rows, self.end_ids[mode]] |= end_ok
        # Open a span only if begin + min codes + end fit in what is left.
        left = remaining if isinstance(remaining, int) else remaining[:, None]
        fits = (self.may_open if may_open is None else may_open) & (self.min_len[1:-1] + 2 <= left)  # (M,) / (B, M)
        allowed[:, self.begin_ids] = (mode == 0)[:, None] & fits
        return allowed

    def mask_key(self, state: GrammarState, remaining: int) -> tuple:
        """Everything :meth:`allowed` ``(state, remaining)`` depends on, as plain Python values: equal keys give
        equal masks, so a decoding loop keeps its last mask while the key stays the same (a text row keeps it from
        one step to the next until its budget gets too small to open a span)."""
        return (state.mode.tolist(), state.pos.tolist(), state.limit.tolist(),
                [cost <= remaining for cost in self._open_costs])

    def advance(self, state: GrammarState, tokens: torch.Tensor, remaining: int | torch.Tensor) -> GrammarState:
        """State after each row emitted ``tokens`` (``(B,)``), ``remaining`` (one count, or one per row) counting
        this token."""
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
