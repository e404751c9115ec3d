"""Emu3 (transformers ``Emu3ForConditionalGeneration``) as an anygen model: text-to-image and captioning.

The core is transformers' ``Emu3ForCausalLM`` (the text model; the VQ-VAE goes to the image tokenizer) with its
embedding and output rows laid out in anygen's ids (:mod:`anygen.interop.id_map`): ``<|image|>`` / ``<|/image|>``
copy ``<|image start|>`` / ``<|image end|>``, content code ``c`` copies ``<|visual token c|>``, and the layout codes
of :class:`~anygen.interop.emu3_vq.Emu3ImageTokenizer` copy end-of-line, end-of-frame, ``<|image token|>`` and the
text pieces of ``"h*w"``. So an anygen image span holds exactly the tokens Emu3 reads and writes, and the grammar
(a :class:`~anygen.generation.grammar.SpanLayout`) forces the fixed ones as Emu3's own ``prefix_allowed_tokens_fn``
does.

Example:
    >>> model = from_emu3("Emu3-Gen-hf", image_size=(720, 720))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Emu3ForConditionalGeneration

from anygen.errors import CheckpointError
from anygen.interop.emu3_vq import Emu3ImageTokenizer
from anygen.interop.id_map import IdMap
from anygen.interop.source import (CLIP_MEAN, CLIP_STD, converted_core, load_reference, read_normalization,
                                   read_source_config, read_text_tokenizer)
from anygen.model import AnyGen
from anygen.tokenizers.text import TextTokenizer

CORE_CLASS = "Emu3ForCausalLM"
BEGIN_IMAGE, END_IMAGE, IMAGE_TOKEN = "<|image start|>", "<|image end|>", "<|image token|>"
END_OF_LINE, END_OF_FRAME = "<|extra_200|>", "<|extra_201|>"
DEFAULT_IMAGE_SIZE = (720, 720)  # Emu3's processor default: an image area of 518400 pixels, ratio 1:1


def from_emu3(directory: str | Path, *, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
              dtype: torch.dtype | None = None, attn_implementation: str = "sdpa") -> AnyGen:
    """An :class:`~anygen.model.AnyGen` from a local transformers Emu3 checkpoint directory.

    Args:
        directory: ``save_pretrained`` output of ``Emu3ForConditionalGeneration`` with its ``tokenizer.json``
            (and ``preprocessor_config.json`` for the image mean / std, else the processor's defaults).
        image_size: ``(H, W)`` of generated and read images (multiples of the VQ-VAE's spatial factor).
        dtype: the core's dtype (default: the checkpoint's).

    Raises:
        CheckpointError: not an Emu3 checkpoint, a weight or a special token missing, or visual tokens that do not
            cover the VQ-VAE's codebook.
    """
    read_source_config(directory, "emu3")
    text = read_text_tokenizer(directory)
    reference = load_reference(directory, Emu3ForConditionalGeneration, dtype)
    pieces = text_pieces(text, image_size, int(reference.model.vqmodel.vision_spatial_factor))
    mean, std = read_normalization(directory, CLIP_MEAN, CLIP_STD)
    tokenizer = Emu3ImageTokenizer(reference.model.vqmodel, image_size, mean, std, len(pieces))
    ids = _id_map(reference, pieces, directory)
    core = _core(reference, ids, directory, attn_implementation)
    return AnyGen(core, ids.vocab, text, {"image": tokenizer}).eval()


def _id_map(reference: Emu3ForConditionalGeneration, pieces: list[int], directory: str | Path) -> IdMap:
    names = dict(reference.config.vocabulary_map or {})
    missing = [t for t in (BEGIN_IMAGE, END_IMAGE, IMAGE_TOKEN, END_OF_LINE, END_OF_FRAME) if t not in names]
    if missing:
        raise CheckpointError(f"{directory}: vocabulary_map has no {missing} (Emu3's image layout tokens)")
    img2bpe = reference.model.vocabulary_mapping.img2bpe  # code -> source id of <|visual token code|>
    codes = int(reference.config.vq_config.codebook_size)
    if sorted(img2bpe) != list(range(codes)):
        raise CheckpointError(f"{directory}: vocabulary_map names {len(img2bpe)} visual tokens but the VQ codebook "
                              f"has {codes} codes")
    config = reference.config.text_config
    specials = {"<|pad|>": config.pad_token_id, "<|bos|>": config.bos_token_id, "<|eos|>": config.eos_token_id,
                "<|image|>": names[BEGIN_IMAGE], "<|/image|>": names[END_IMAGE]}
    layout = [names[END_OF_LINE], names[END_OF_FRAME], names[IMAGE_TOKEN]]  # Emu3ImageTokenizer's layout codes
    content = [img2bpe[c] for c in range(codes)]
    reserved = [*specials.values(), *content, *layout]  # the "h*w" pieces stay text (digits, '*')
    return IdMap.build(int(config.vocab_size), specials, [*content, *layout, *pieces], reserved)


def _core(reference: Emu3ForConditionalGeneration, ids: IdMap, directory: str | Path,
          attn_implementation: str) -> torch.nn.Module:
    config = {**reference.config.text_config.to_dict(), "vocab_size": ids.vocab.size}
    return converted_core(reference, config, CORE_CLASS, _rename, ids, directory, attn_implementation)


def _rename(key: str) -> str | None:
    """The ``Emu3ForCausalLM`` name of an ``Emu3ForConditionalGeneration`` tensor (``None``: the VQ-VAE's)."""
    if key.startswith("model.text_model."):
        return "model." + key[len("model.text_model."):]
    return key if key.startswith("lm_head.") else None


def text_pieces(text: TextTokenizer, image_size: Sequence[int], factor: int) -> list[int]:
    """The source ids of ``f"{h}*{w}"`` for an ``image_size`` image (what follows ``<|image start|>``)."""
    return text.encode(f"{int(image_size[0]) // factor}*{int(image_size[1]) // factor}")
