"""The one place token ids are laid out.

Layout (global ids)::

    [0, text_size)                      text tokens (a pretrained LLM's rows keep their meaning); ``reserved``
                                        ranges in it are never sampled as text (see below)
    [text_size, text_size + S)          specials: <|pad|> <|bos|> <|eos|>, then <|m|> <|/m|> per modality m
    one span of codebook_size ids per codebook of each modality, in registration order
    padding up to a multiple of ``pad_to`` (never emitted: the grammar masks it)
    then, per *appended* modality (added to a trained model): <|m|> <|/m|>, its spans, padding again

Everything about a modality (its specials, spans, grammar) is derived from ``(name, codebook_size,
num_codebooks)``, so adding a modality never touches this file. A model that is already trained gets new
modalities with :meth:`Vocab.extended`, which appends them after every existing id, so no id changes meaning.

``reserved`` text ids: a model converted from a public checkpoint (``anygen.interop``) keeps the source's ids as
its text span, so the source's own specials and image tokens sit there too, while their rows are copied to
anygen's specials and codebook spans. Those ids stay readable but the sampler never emits them as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from anygen.errors import CheckpointError, InvalidArgumentError

TEXT = "text"
BASE_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")


@dataclass(frozen=True)
class ModalitySpec:
    """What the vocab needs to know about a modality tokenizer."""

    name: str
    codebook_size: int
    num_codebooks: int = 1


def begin_token(modality: str) -> str:
    return f"<|{modality}|>"


def end_token(modality: str) -> str:
    return f"<|/{modality}|>"


class Vocab:
    """Global token-id layout for text, specials and every codebook of every modality.

    Args:
        text_size: number of ids the text tokenizer uses (``len(tokenizer)`` including its own added tokens).
        modalities: one :class:`ModalitySpec` per modality tokenizer, in a fixed order.
        pad_to: the total size is rounded up to a multiple of this (embedding matmuls like it).

    Example:
        >>> v = Vocab(100, [ModalitySpec("image", 16)])
        >>> v.span("image")
        range(105, 121)
    """

    def __init__(self, text_size: int, modalities: list[ModalitySpec], pad_to: int = 64,
                 appended: Sequence[ModalitySpec] = (), reserved: Sequence[Sequence[int]] = ()) -> None:
        if text_size <= 0:
            raise InvalidArgumentError(f"text_size={text_size} must be > 0")
        self.reserved = tuple((int(a), int(b)) for a, b in reserved)  # [start, stop) ranges of text ids
        if any(not 0 <= a < b <= text_size for a, b in self.reserved):
            raise InvalidArgumentError(f"reserved={list(self.reserved)} must be [start, stop) ranges inside "
                                       f"[0, text_size={text_size})")
        names = [m.name for m in (*modalities, *appended)]
        if len(set(names)) != len(names) or TEXT in names:
            raise InvalidArgumentError(f"modality names must be unique and not 'text', got {names}")
        if pad_to <= 0:
            raise InvalidArgumentError(f"pad_to={pad_to} must be > 0")
        self.text_size = text_size
        self.base = list(modalities)
        self.appended = list(appended)
        self.modalities = self.base + self.appended  # every modality; its index + 1 is its modality id
        self.pad_to = pad_to
        specials = list(BASE_SPECIALS)
        for m in modalities:
            specials += [begin_token(m.name), end_token(m.name)]
        self.specials = {tok: text_size + i for i, tok in enumerate(specials)}
        self._starts: dict[str, list[int]] = {}
        cursor = self._lay_out_spans(self.base, text_size + len(specials))
        for m in self.appended:  # each appended block starts after the padded end of everything before it
            start = self._padded(cursor)
            self.specials[begin_token(m.name)], self.specials[end_token(m.name)] = start, start + 1
            cursor = self._lay_out_spans([m], start + 2)
        self.used_size = cursor
        self.size = self._padded(cursor)

    def _padded(self, cursor: int) -> int:
        return -(-cursor // self.pad_to) * self.pad_to

    def _lay_out_spans(self, modalities: Sequence[ModalitySpec], cursor: int) -> int:
        """Give each codebook of ``modalities`` its span from ``cursor`` on; returns the first free id."""
        for m in modalities:
            if m.codebook_size <= 0 or m.num_codebooks <= 0:
                raise InvalidArgumentError(f"modality {m.name!r}: codebook_size and num_codebooks must be > 0")
            self._starts[m.name] = [cursor + k * m.codebook_size for k in range(m.num_codebooks)]
            cursor += m.codebook_size * m.num_codebooks
        return cursor

    def extended(self, spec: ModalitySpec) -> "Vocab":
        """A copy with ``spec`` appended after every existing id (padding included): no id changes meaning.

        Example:
            >>> v = Vocab(100, [ModalitySpec("image", 16)])
            >>> w = v.extended(ModalitySpec("signal", 8))
            >>> w.span("image") == v.span("image"), w.begin_id("signal"), w.span("signal"), w.size
            (True, 128, range(130, 138), 192)
        """
        if spec.name in self.modality_names:
            raise InvalidArgumentError(f"modality {spec.name!r} is already in this vocab {self.modality_names[1:]}")
        return Vocab(self.text_size, self.base, self.pad_to, [*self.appended, spec], self.reserved)

    # ---- names -> ids -------------------------------------------------------------------------------------
    @property
    def modality_names(self) -> list[str]:
        """``["text", *modalities]``: index ``i`` is the modality id used in ``modality_ids`` tensors."""
        return [TEXT] + [m.name for m in self.modalities]

    @property
    def pad_id(self) -> int:
        return self.specials["<|pad|>"]

    @property
    def bos_id(self) -> int:
        return self.specials["<|bos|>"]

    @property
    def eos_id(self) -> int:
        return self.specials["<|eos|>"]

    def spec(self, modality: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == modality:
                return m
        raise InvalidArgumentError(f"unknown modality {modality!r}; this vocab has {self.modality_names[1:]}")

    def begin_id(self, modality: str) -> int:
        self.spec(modality)
        return self.specials[begin_token(modality)]

    def end_id(self, modality: str) -> int:
        self.spec(modality)
        return self.specials[end_token(modality)]

    def span(self, modality: str, codebook: int = 0) -> range:
        """Global ids of one codebook of ``modality``."""
        spec = self.spec(modality)
        if not 0 <= codebook < spec.num_codebooks:
            raise InvalidArgumentError(f"codebook={codebook} outside [0, {spec.num_codebooks}) for {modality!r}")
        start = self._starts[modality][codebook]
        return range(start, start + spec.codebook_size)

    # ---- local <-> global codes ---------------------------------------------------------------------------
    def _offsets(self, modality: str, length: int) -> torch.Tensor:
        starts = torch.tensor(self._starts[modality])
        return starts[torch.arange(length) % len(starts)]

    def to_global(self, modality: str, codes: torch.Tensor) -> torch.Tensor:
        """Local codes ``(..., N)`` (codebooks interleaved per frame) -> global ids ``(..., N)``."""
        spec = self.spec(modality)
        codes = torch.as_tensor(codes).long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= spec.codebook_size):
            raise InvalidArgumentError(
                f"{modality} codes must lie in [0, {spec.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return codes + self._offsets(modality, codes.shape[-1]).to(codes.device)

    def to_local(self, modality: str, ids: torch.Tensor) -> torch.Tensor:
        """Global ids ``(..., N)`` of a span -> local codes; raises if an id is not in its codebook's span."""
        spec = self.spec(modality)
        ids = torch.as_tensor(ids).long()
        local = ids - self._offsets(modality, ids.shape[-1]).to(ids.device)
        if local.numel() and (local.min() < 0 or local.max() >= spec.codebook_size):
            raise InvalidArgumentError(
                f"ids are not {modality} codes in codebook order (expected {spec.num_codebooks} interleaved "
                f"codebook(s) of {spec.codebook_size})")
        return local

    # ---- masks and lookups ---------------------------------------------------------------------------------
    def modality_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Modality id (index into :attr:`modality_names`) of each global id; text and specials are 0."""
        ids = torch.as_tensor(ids)
        out = torch.zeros_like(ids, dtype=torch.long)
        for i, m in enumerate(self.modalities, start=1):
            lo = self._starts[m.name][0]
            hi = lo + m.codebook_size * m.num_codebooks
            out[(ids >= lo) & (ids < hi)] = i
        return out

    def mask(self, modality: str, codebook: int | None = None) -> torch.Tensor:
        """Boolean ``(size,)`` mask of the ids of ``modality`` ('text' = text ids, reserved ones excluded), one
        codebook or all."""
        out = torch.zeros(self.size, dtype=torch.bool)
        if modality == TEXT:
            out[: self.text_size] = True
            for start, stop in self.reserved:
                out[start:stop] = False
            return out
        spec = self.spec(modality)
        for k in range(spec.num_codebooks) if codebook is None else [codebook]:
            span = self.span(modality, k)
            out[span.start: span.stop] = True
        return out

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly layout; ``appended`` / ``reserved`` are present only when used (older files lack them)."""
        data: dict[str, Any] = {"text_size": self.text_size, "pad_to": self.pad_to,
                                "modalities": [[m.name, m.codebook_size, m.num_codebooks] for m in self.base]}
        if self.appended:
            data["appended"] = [[m.name, m.codebook_size, m.num_codebooks] for m in self.appended]
        if self.reserved:
            data["reserved"] = [list(r) for r in self.reserved]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocab":
        try:
            mods = [ModalitySpec(str(n), int(c), int(k)) for n, c, k in data["modalities"]]
            appended = [ModalitySpec(str(n), int(c), int(k)) for n, c, k in data.get("appended", [])]
            return cls(int(data["text_size"]), mods, int(data.get("pad_to", 64)), appended,
                       [(int(a), int(b)) for a, b in data.get("reserved", [])])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed vocab entry in config: {data!r} ({err})") from err

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}:{m.num_codebooks}x{m.codebook_size}" for m in self.modalities)
        return f"Vocab(text={self.text_size}, specials={len(self.specials)}, {mods}, size={self.size})"
