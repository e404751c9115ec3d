"""``AnyGen``: one transformers causal LM + modality tokenizers + the vocab that lays their ids out.

Saved layout (``save_pretrained``)::

    config.json            format version, the core's transformers config, the vocab, the tokenizer classes
    model.safetensors      the core's weights (tied duplicates stored once)
    text_tokenizer/        tokenizer.json
    tokenizers/<modality>/ each modality tokenizer's own files
    decoders/<key>/        optional decoders' own files (image: a DiffusionDecoder; image-upscale: an UpscaleDecoder)
    adapters.safetensors   optional token-gated adapters of appended modalities (anygen.gated_lora)
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from anygen.gated_lora import AdapterSpec, GatedAdapters
from anygen.core import AUTO_CORE, CoreConfig, build_core, core_class_name, extend_vocab, load_pretrained_core
from anygen.decoders import Decoders, decoder_class
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.generation.grammar import SpanRule, span_rules
from anygen.processor import IGNORE, Processor
from anygen.safe_replace import recover, replace_dir
from anygen.saved_model import (
    ADAPTERS,
    CONFIG,
    FORMAT_VERSION,
    WEIGHTS,
    core_skeleton,
    inside,
    is_model_dir,
    load_core,
    load_weights,
    read_config,
    read_vocab,
    read_weights,
    save_tensors,
    unique_tensors,
)
from anygen.tokenizers.base import ModalityTokenizer
from anygen.tokenizers.registry import tokenizer_class
from anygen.tokenizers.text import TextTokenizer
from anygen.vocab import ModalitySpec, Vocab



@dataclass
class AnyGenOutput:
    """``loss``: weighted mean over target tokens; ``losses``: unweighted mean per modality present."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class AnyGen(nn.Module):
    """An any-to-any model.

    Args:
        core: a transformers causal LM with at least ``vocab.size`` embedding rows.
        vocab: the id layout.
        text_tokenizer: text <-> ids.
        tokenizers: one :class:`ModalityTokenizer` per modality of ``vocab``.
        decoders: optional decoders, e.g. ``{"image": DiffusionDecoder, "image-upscale": UpscaleDecoder}`` (the
            pipelines' ``decoder="diffusion"`` and ``decoder="upscale"``); saved under ``decoders/<key>/``, and a
            loaded model reads them on first use (:class:`~anygen.decoders.Decoders`).
        adapters: token-gated adapters (:class:`~anygen.gated_lora.GatedAdapters`) built for ``core``; they are
            attached to it here and saved in ``adapters.safetensors``.

    Example:
        >>> from anygen.tokenizers import GridImageTokenizer, TextTokenizer
        >>> text = TextTokenizer.train(["a red circle"], vocab_size=300)
        >>> model = AnyGen.create(text, {"image": GridImageTokenizer()}, CoreConfig(64, 2, 4, 2, 128, 256))
        >>> model.vocab.modality_names
        ['text', 'image']
    """

    def __init__(self, core: nn.Module, vocab: Vocab, text_tokenizer: TextTokenizer,
                 tokenizers: Mapping[str, ModalityTokenizer], decoders: Mapping[str, Any] | None = None,
                 adapters: list[GatedAdapters] | None = None) -> None:
        super().__init__()
        _check_tokenizers(vocab, text_tokenizer, tokenizers)
        rows = core.get_input_embeddings().weight.shape[0]
        if rows < vocab.size:
            raise InvalidArgumentError(f"the core has {rows} embedding rows but the vocab needs {vocab.size}")
        self.core, self.vocab, self.text_tokenizer = core, vocab, text_tokenizer
        self.tokenizers = dict(tokenizers)  # not submodules: each tokenizer saves its own files
        self.processor = Processor(vocab, text_tokenizer, self.tokenizers)
        # optional, e.g. {"image": DiffusionDecoder}; not submodules either; a loaded model's are read on first use
        self.decoders = decoders.copy() if isinstance(decoders, Decoders) else Decoders(decoders)
        for adapter in adapters or []:
            if adapter.spec.end_id > vocab.size:
                raise CheckpointError(f"an adapter gates ids up to {adapter.spec.end_id} but the vocab has "
                                      f"{vocab.size}")
        self.adapters = nn.ModuleList([a.attach(core) for a in adapters or []])

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, text_tokenizer: TextTokenizer, tokenizers: Mapping[str, ModalityTokenizer],
               core: CoreConfig | None = None, *, pretrained_core: str | Path | None = None,
               gguf_file: str | None = None, attn_implementation: str = "sdpa") -> "AnyGen":
        """A new model: a fresh Llama-style core from ``core``, or a local pretrained LLM extended with new rows.

        With ``pretrained_core`` the text ids keep their pretrained rows and every multimodal row starts at the
        mean of the pretrained embeddings.
        """
        specs = [ModalitySpec(name, t.codebook_size, t.num_codebooks) for name, t in tokenizers.items()]
        if pretrained_core is None:
            vocab = Vocab(text_tokenizer.vocab_size, specs)
            return cls(build_core(core or CoreConfig(), vocab.size, attn_implementation), vocab, text_tokenizer,
                       tokenizers)
        llm = load_pretrained_core(pretrained_core, gguf_file, attn_implementation)
        rows = llm.get_input_embeddings().weight.shape[0]
        vocab = Vocab(max(rows, text_tokenizer.vocab_size), specs)
        extend_vocab(llm, vocab.size)
        return cls(llm, vocab, text_tokenizer, tokenizers)

    def replace_tokenizer(self, name: str, tokenizer: ModalityTokenizer, align_with: Any = None) -> None:
        """Tokenize modality ``name`` with ``tokenizer`` from now on, e.g. a retrained audio codec.

        The new tokenizer must lay out the same ids (``codebook_size`` x ``num_codebooks``). Without
        ``align_with`` the core keeps its rows for them, which mean something else now. With ``align_with``, a
        media batch both tokenizers encode (e.g. ``(B, samples)`` audio clips), each new code's embedding (and
        untied output) row becomes the mean of the rows of the old codes it shares frames with in that batch, so
        training on the new codes starts from what the core knew about the same sounds or patches; codes the batch
        never produces keep their rows. Either way the model needs training on the new codes. The decoders of that
        modality render the old codes and are dropped."""
        if name not in self.vocab.modality_names[1:]:
            raise InvalidArgumentError(f"no modality {name!r} to replace; valid: {self.vocab.modality_names[1:]}")
        _check_tokenizers(self.vocab, self.text_tokenizer, {**self.tokenizers, name: tokenizer})
        if align_with is not None:
            with torch.no_grad():
                self._align_rows(name, self.vocab.to_global(name, self.tokenizers[name].encode(align_with)),
                                 self.vocab.to_global(name, tokenizer.encode(align_with)))
        self.tokenizers[name] = tokenizer
        self.processor = Processor(self.vocab, self.text_tokenizer, self.tokenizers)
        for key in [k for k in self.decoders if k == name or k.startswith(f"{name}-")]:  # e.g. image-upscale
            del self.decoders[key]

    def _align_rows(self, name: str, old_ids: torch.Tensor, new_ids: torch.Tensor) -> None:
        """Set each id of ``new_ids`` (B, N') to the mean row of the ``old_ids`` (B, N) on the same frames."""
        k = self.vocab.spec(name).num_codebooks
        old_frames, new_frames = old_ids.view(old_ids.shape[0], -1, k), new_ids.view(new_ids.shape[0], -1, k)
        if old_frames.shape[1] == 0 or new_frames.shape[1] == 0:
            raise InvalidArgumentError(f"align_with gives no {name} frames to align the new codes with")
        # frame j of the new codes covers the same time / place as frame j * F / F' of the old ones
        at = torch.arange(new_frames.shape[1]) * old_frames.shape[1] // new_frames.shape[1]
        old_flat, new_flat = old_frames[:, at].reshape(-1), new_frames.reshape(-1)
        tables = [self.core.get_input_embeddings().weight]
        if not self.core.config.tie_word_embeddings and self.core.get_output_embeddings() is not None:
            tables.append(self.core.get_output_embeddings().weight)
        for table in tables:
            new_at, old_at = new_flat.to(table.device), old_flat.to(table.device)
            count = torch.zeros(table.shape[0], device=table.device).index_add_(0, new_at, torch.ones_like(
                new_at, dtype=torch.float32))
            sums = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
            sums.index_add_(0, new_at, table[old_at].float())
            seen = count > 0
            table[seen] = (sums[seen] / count[seen, None]).to(table.dtype)

    def span_rules(self, item_shapes: Mapping[str, Any]) -> list[SpanRule]:
        """Grammar rules for generation, e.g. ``model.span_rules({"image": (64, 64), "audio": 48000})``."""
        return span_rules(self.vocab, self.tokenizers, item_shapes)

    # ---- training forward -----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, loss_weights: Mapping[str, float] | None = None) -> AnyGenOutput:
        """Next-token logits ``(B, T, V)``; with ``labels`` also the loss, in total and per modality.

        ``loss_weights`` scales each target token's loss by its modality (missing = 1); with no weights the
        total equals transformers' causal-LM loss on the same ids.
        """
        logits = self.core(input_ids=input_ids, attention_mask=attention_mask).logits
        if labels is None:
            return AnyGenOutput(logits)
        targets = labels[:, 1:]  # (B, T-1)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                             reduction="none").view_as(targets)
        valid = targets != IGNORE
        modality = self.vocab.modality_of(targets.clamp(min=0))
        weights = torch.ones(len(self.vocab.modality_names), device=ce.device)
        for name, w in (loss_weights or {}).items():
            weights[self.vocab.modality_names.index(name)] = float(w)
        token_w = weights[modality] * valid
        loss = (ce * token_w).sum() / valid.sum().clamp(min=1)
        losses = {name: ce[valid & (modality == i)].mean()
                  for i, name in enumerate(self.vocab.modality_names) if bool((valid & (modality == i)).any())}
        return AnyGenOutput(logits, loss, losses)

    # ---- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None, *,
                        overwrite: bool = False) -> None:
        """Write the model to ``directory``; an earlier save there is replaced only once the new one is whole.

        The new copy is written beside ``directory`` and swapped in (:mod:`anygen.safe_replace`): a crash at any
        point leaves the old or the new model loadable, and the next load or save recovers or removes what it
        left. ``directory`` may be missing, empty or an anygen model; anything else (a file, a folder holding
        other things) is refused unless ``overwrite=True``.

        Args:
            directory: where the model goes, e.g. ``"out/my-model"``.
            dtype: e.g. ``torch.float16``: casts the stored weights of the core and of every tokenizer that
                accepts a ``dtype``; loading casts them back to the requested dtype.
            overwrite: replace ``directory`` whatever it holds.

        Raises:
            CheckpointError: ``directory`` is a file or a non-empty folder that is not an anygen model (and
                ``overwrite`` is False), or a weight is NaN/Inf.
        """
        replace_dir(Path(directory), lambda folder: self._write(folder, dtype), may_replace=is_model_dir,
                    overwrite=overwrite)

    def _write(self, directory: Path, dtype: torch.dtype | None) -> None:
        core_class = core_class_name(self.core)  # refuses a class that loading would not build, before writing
        save_tensors(unique_tensors(self.core), directory / WEIGHTS, dtype, "weights")
        self.text_tokenizer.save_pretrained(directory / "text_tokenizer")
        entries = {}
        for name, tok in self.tokenizers.items():
            takes_dtype = "dtype" in inspect.signature(tok.save_pretrained).parameters
            tok.save_pretrained(directory / "tokenizers" / name, **({"dtype": dtype} if takes_dtype else {}))
            entries[name] = {"class": type(tok).__name__, "path": f"tokenizers/{name}"}
        for name, decoder in self.decoders.items():
            decoder.save_pretrained(directory / "decoders" / name, dtype=dtype)
        config = {"format": "anygen", "version": FORMAT_VERSION, "core": self.core.config.to_dict(),
                  "core_class": core_class, "vocab": self.vocab.to_dict(), "tokenizers": entries,
                  "text_tokenizer": "text_tokenizer"}
        if len(self.adapters):
            save_tensors(self.adapters.state_dict(), directory / ADAPTERS, dtype, "adapter weights")
            config["adapters"] = [a.spec.to_dict() for a in self.adapters]
        (directory / CONFIG).write_text(json.dumps(config, indent=2, default=str))

    @classmethod
    def from_pretrained(cls, directory: str | Path, attn_implementation: str = "sdpa",
                        dtype: torch.dtype = torch.float32) -> "AnyGen":
        """Load a model written by :meth:`save_pretrained` (safetensors only; strict about every key and shape).

        Everything is checked before the core is allocated (``anygen.saved_model``): ``config.json`` against its
        schema (the core's class against :mod:`anygen.core`'s allow-list), the weights against a core built on the
        meta device, the tokenizers against the vocab. Any failure raises :class:`CheckpointError` naming the file
        and the key; no half-built model is returned.
        """
        directory = Path(directory)
        with contextlib.suppress(OSError):  # e.g. a read-only folder: load what is there
            recover(directory)  # a save killed mid-swap left the model beside its place
        config = read_config(directory)
        source, weights_path = directory / CONFIG, directory / WEIGHTS
        weights = read_weights(weights_path)
        core_class = config.get("core_class", AUTO_CORE)
        skeleton = core_skeleton(config["core"], weights, weights_path, attn_implementation, core_class)
        vocab = read_vocab(config["vocab"], skeleton.get_input_embeddings().weight.shape[0], source)
        text = TextTokenizer.from_pretrained(inside(directory, config["text_tokenizer"], "text_tokenizer", source))
        tokenizers = {name: _load_tokenizer(directory, name, entry) for name, entry in config["tokenizers"].items()}
        _check_tokenizers(vocab, text, tokenizers, f"{directory}: ")
        core = load_core(config["core"], weights, weights_path, attn_implementation, core_class)
        del weights
        adapters = _load_adapters(core, config.get("adapters", []), directory / ADAPTERS)
        model = cls(core, vocab, text, tokenizers, _load_decoders(directory), adapters)
        return model.to(dtype).eval()


# ---- helpers ---------------------------------------------------------------------------------------------------


def _check_tokenizers(vocab: Vocab, text: TextTokenizer, tokenizers: Mapping[str, ModalityTokenizer],
                      where: str = "") -> None:
    """Raise :class:`CheckpointError` (its message starting with ``where``) unless the tokenizers fit ``vocab``."""
    if text.vocab_size > vocab.text_size:  # its extra ids would land on specials or codebook ids
        raise CheckpointError(f"{where}the text tokenizer uses {text.vocab_size} ids but the vocab's text span holds "
                              f"vocab.text_size={vocab.text_size}: ids from {vocab.text_size} on belong to special "
                              "and media tokens (was the tokenizer replaced after the model was built?)")
    for spec in vocab.modalities:
        tok = tokenizers.get(spec.name)
        if tok is None:
            raise CheckpointError(f"{where}no tokenizer for modality {spec.name!r}")
        got = (tok.codebook_size, tok.num_codebooks)
        if got != (spec.codebook_size, spec.num_codebooks):
            raise CheckpointError(f"{where}{spec.name} tokenizer has codebook_size x num_codebooks = {got}, but the "
                                  f"vocab was built for {(spec.codebook_size, spec.num_codebooks)}")
    extra = set(tokenizers) - set(vocab.modality_names)
    if extra:
        raise CheckpointError(f"{where}tokenizers for modalities the vocab lacks: {sorted(extra)}")


def _load_tokenizer(directory: Path, name: str, entry: Mapping[str, str]) -> ModalityTokenizer:
    """The tokenizer a checked ``config.json`` entry names; whatever its class raises becomes a CheckpointError."""
    source = directory / CONFIG
    path = inside(directory, entry["path"], f"tokenizers.{name}.path", source)
    cls = tokenizer_class(entry["class"])
    try:
        return cls.from_pretrained(path)
    except CheckpointError:
        raise
    except Exception as err:  # tokenizer classes are pluggable: a wrong folder may fail in any way
        raise CheckpointError(f"{source}: tokenizers.{name} ({entry['class']} at {entry['path']!r}) cannot be "
                              f"loaded: {type(err).__name__}: {err}") from err


def _load_decoders(directory: Path) -> Decoders:
    """The decoders saved under ``decoders/<modality>/`` (none for a model without that folder), each read on first
    use; a folder whose ``config.json`` names no known decoder class is refused now."""
    if not (directory / "decoders").is_dir():
        return Decoders()
    folders = {p.name: p for p in sorted((directory / "decoders").iterdir()) if p.is_dir()}
    for path in folders.values():
        decoder_class(path)
    return Decoders(folders=folders)


def _load_adapters(core: nn.Module, specs: list[dict[str, Any]], path: Path) -> list[GatedAdapters]:
    """The adapter sets ``config.json`` lists, with their weights from ``adapters.safetensors`` (checked)."""
    if not specs:
        return []
    try:
        adapters = nn.ModuleList([GatedAdapters(core, AdapterSpec(**spec)) for spec in specs])
    except (TypeError, InvalidArgumentError) as err:
        raise CheckpointError(f"{path.parent / CONFIG}: bad adapters entry: {err}") from err
    load_weights(adapters, path)
    return list(adapters)
