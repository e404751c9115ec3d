"""Chameleon / Anole (transformers ``ChameleonForConditionalGeneration``) as an anygen model.

The core stays transformers' ``ChameleonForConditionalGeneration`` (its VQ encoder removed: images enter as codes
through the image tokenizer), with the embedding and output rows laid out in anygen's ids
(:mod:`anygen.interop.id_map`): image code ``c`` is a copy of the row of the source's ``IMGIMG...`` token of
``c``, ``<|image|>`` / ``<|/image|>`` copy ``<racm3:break>`` / ``<eoss>``. The source's own image tokens stay in the
text span, reserved; Chameleon's forward still sets their logits to the dtype minimum, as the original does, while
anygen's image ids are free, which is all Anole's image generation needs. Pixels come from
:class:`~anygen.interop.chameleon_vqgan.ChameleonImageTokenizer` (the released VQGAN's decoder).

Example:
    >>> model = from_chameleon("Anole-7b-hf", vqgan_weights="vqgan.safetensors")   # doctest: +SKIP
    >>> model.save_pretrained("anole-anygen")                                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import ChameleonForConditionalGeneration

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.interop.chameleon_vqgan import ChameleonImageTokenizer
from anygen.interop.id_map import IdMap
from anygen.interop.source import converted_core, load_reference, read_source_config, read_text_tokenizer
from anygen.model import AnyGen

CORE_CLASS = "ChameleonForConditionalGeneration"
BEGIN_IMAGE, END_IMAGE = "<racm3:break>", "<eoss>"


def build_chameleon_core(config: object) -> ChameleonForConditionalGeneration:
    """A ``ChameleonForConditionalGeneration`` without its VQ encoder (anygen's image tokenizer holds that)."""
    core = ChameleonForConditionalGeneration(config)
    core.model.vqmodel = None
    return core


def from_chameleon(directory: str | Path, *, vqgan_weights: str | Path | None = None,
                   image_tokenizer: ChameleonImageTokenizer | None = None, encoder_only: bool = False,
                   image_size: Sequence[int] | None = None, dtype: torch.dtype | None = None,
                   attn_implementation: str = "sdpa") -> AnyGen:
    """An :class:`~anygen.model.AnyGen` from a local transformers Chameleon / Anole checkpoint directory.

    Args:
        directory: ``save_pretrained`` output of ``ChameleonForConditionalGeneration`` with its ``tokenizer.json``.
        vqgan_weights: the released VQGAN (``vqgan.ckpt`` converted to safetensors), for the pixel decoder.
        image_tokenizer: a ready :class:`ChameleonImageTokenizer` instead of ``vqgan_weights``.
        encoder_only: accept a model that reads images but cannot draw them (no decoder weights).
        image_size: ``(H, W)`` of images (default the VQGAN's, 512 x 512 = 1024 codes).
        dtype: the core's dtype (default: the checkpoint's).

    Raises:
        CheckpointError: not a Chameleon checkpoint, missing weights or tokens, a tokenizer whose codebook differs
            from the checkpoint's image tokens, or no pixel decoder without ``encoder_only``.
    """
    if image_tokenizer is not None and (vqgan_weights is not None or image_size is not None):
        raise InvalidArgumentError("pass image_tokenizer, or vqgan_weights / image_size to build one, not both")
    read_source_config(directory, "chameleon")
    text = read_text_tokenizer(directory)
    reference = load_reference(directory, ChameleonForConditionalGeneration, dtype)
    ids = _id_map(reference, directory)
    tokenizer = image_tokenizer or ChameleonImageTokenizer.from_chameleon(directory, vqgan_weights, image_size)
    if tokenizer.codebook_size != ids.vocab.spec("image").codebook_size:
        raise CheckpointError(f"the image tokenizer has {tokenizer.codebook_size} codes but {directory} names "
                              f"{ids.vocab.spec('image').codebook_size} image tokens")
    if not tokenizer.has_decoder and not encoder_only:
        raise CheckpointError(f"{directory}: transformers' Chameleon checkpoints hold no pixel decoder; pass "
                              "vqgan_weights=<the released VQGAN as safetensors> (convert --vqgan FILE), or "
                              "encoder_only=True for a model that reads images but cannot draw them")
    core = _core(reference, ids, directory, attn_implementation)
    return AnyGen(core, ids.vocab, text, {"image": tokenizer}).eval()


def _id_map(reference: ChameleonForConditionalGeneration, directory: str | Path) -> IdMap:
    config = reference.config
    names = dict(config.vocabulary_map or {})
    img2bpe = reference.model.vocabulary_mapping.img2bpe  # code -> source id of its IMGIMG token
    codes = int(config.vq_config.num_embeddings)
    if sorted(img2bpe) != list(range(codes)):
        raise CheckpointError(f"{directory}: vocabulary_map names {len(img2bpe)} IMGIMG image tokens but the VQ "
                              f"codebook has {codes} codes")
    for token in (BEGIN_IMAGE, END_IMAGE):
        if token not in names:
            raise CheckpointError(f"{directory}: vocabulary_map has no {token!r} (Chameleon's image delimiters)")
    bos, eos = config.bos_token_id, config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else names.get("<pad>", bos)
    specials = {"<|pad|>": pad, "<|bos|>": bos, "<|eos|>": eos, "<|image|>": names[BEGIN_IMAGE],
                "<|/image|>": names[END_IMAGE]}
    image_rows = [img2bpe[c] for c in range(codes)]
    return IdMap.build(int(config.vocab_size), specials, image_rows, [*specials.values(), *image_rows])


def _core(reference: ChameleonForConditionalGeneration, ids: IdMap, directory: str | Path,
          attn_implementation: str) -> ChameleonForConditionalGeneration:
    config = {**reference.config.to_dict(), "vocab_size": ids.vocab.size}
    return converted_core(reference, config, CORE_CLASS, lambda key: None if key.startswith("model.vqmodel.") else key,
                          ids, directory, attn_implementation)
