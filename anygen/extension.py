"""Give a trained model a new modality without changing what any existing token id means.

:func:`add_modality` appends the modality's ``<|m|>`` / ``<|/m|>`` specials and codebook spans after every id the
model already has (:meth:`anygen.vocab.Vocab.extended`) and grows the core's embedding and output matrices with
rows initialised to the mean of the old ones (:func:`anygen.core.extend_vocab`). Old token ids, old rows and the
logits of old tokens for inputs made of old tokens are unchanged; the new rows are what training must teach.
``save_pretrained`` records the appended modality, so ``from_pretrained`` rebuilds the same layout.

Example:
    >>> from anygen.tokenizers.signal import SignalTokenizer
    >>> model = AnyGen.from_pretrained("anygen/assets/anygen-tiny")  # doctest: +SKIP
    >>> extended = add_modality(model, SignalTokenizer())           # doctest: +SKIP
    >>> extended.vocab.modality_names                                # doctest: +SKIP
    ['text', 'image', 'audio', 'signal']
"""

from __future__ import annotations

from anygen.core import extend_vocab
from anygen.errors import InvalidArgumentError
from anygen.model import AnyGen
from anygen.tokenizers.base import ModalityTokenizer
from anygen.vocab import ModalitySpec


def add_modality(model: AnyGen, tokenizer: ModalityTokenizer, name: str | None = None) -> AnyGen:
    """A model that shares ``model``'s core (grown in place) and knows one more modality.

    Args:
        model: a trained (or new) model; its core gets the new rows, so keep using the returned model.
        tokenizer: the new modality's tokenizer (any :class:`ModalityTokenizer`).
        name: the modality's name in the vocab; default ``tokenizer.modality``.

    Raises:
        InvalidArgumentError: the name is taken, or the core's row count does not match the vocab.
    """
    name = name or getattr(tokenizer, "modality", "")
    if not name or name != name.strip() or not name.isidentifier():
        raise InvalidArgumentError(f"modality name={name!r} must be a non-empty identifier like 'signal'")
    if name in model.vocab.modality_names:
        raise InvalidArgumentError(f"modality {name!r} is already one of the model's {model.vocab.modality_names}")
    rows = model.core.get_input_embeddings().weight.shape[0]
    if rows != model.vocab.size:
        raise InvalidArgumentError(f"the core has {rows} embedding rows but the vocab lays out {model.vocab.size}; "
                                   "append-only extension needs them equal")
    vocab = model.vocab.extended(ModalitySpec(name, int(tokenizer.codebook_size), int(tokenizer.num_codebooks)))
    extend_vocab(model.core, vocab.size)
    return AnyGen(model.core, vocab, model.text_tokenizer, {**model.tokenizers, name: tokenizer}, model.decoders,
                  list(model.adapters))
