from __future__ import annotations

import pytest
import torch

from anygen.errors import InvalidArgumentError
from anygen.vocab import ModalitySpec, Vocab


@pytest.fixture()
def vocab() -> Vocab:
    return Vocab(1000, [ModalitySpec("image", 512), ModalitySpec("audio", 128, num_codebooks=3)])


def test_spans_are_disjoint_and_cover_the_used_range(vocab: Vocab) -> None:
    owners = torch.full((vocab.size,), -1)
    owners[: vocab.text_size] = 0
    for i, sid in enumerate(vocab.specials.values()):
        assert owners[sid] == -1
        owners[sid] = 1
    for spec in vocab.modalities:
        for k in range(spec.num_codebooks):
            span = vocab.span(spec.name, k)
            assert (owners[span.start: span.stop] == -1).all(), f"{spec.name}/{k} overlaps another span"
            owners[span.start: span.stop] = 2
    assert (owners[: vocab.used_size] >= 0).all(), "a hole in the layout"
    assert (owners[vocab.used_size:] == -1).all() and vocab.size % 64 == 0 and vocab.size >= vocab.used_size


def test_masks_and_modality_of_agree_with_spans(vocab: Vocab) -> None:
    ids = torch.arange(vocab.used_size)
    modality = vocab.modality_of(ids)
    for i, name in enumerate(vocab.modality_names[1:], start=1):
        assert torch.equal(vocab.mask(name)[: vocab.used_size], modality == i)
    assert vocab.mask("text").sum() == vocab.text_size
    assert (modality[list(vocab.specials.values())] == 0).all()


def test_global_local_round_trip_keeps_codebook_order(vocab: Vocab) -> None:
    codes = torch.randint(0, 128, (4, 30))
    ids = vocab.to_global("audio", codes)
    for k in range(3):
        span = vocab.span("audio", k)
        assert ((ids[:, k::3] >= span.start) & (ids[:, k::3] < span.stop)).all()
    assert torch.equal(vocab.to_local("audio", ids), codes)


def test_out_of_range_codes_and_misordered_ids_raise(vocab: Vocab) -> None:
    with pytest.raises(InvalidArgumentError, match=r"\[0, 512\)"):
        vocab.to_global("image", torch.tensor([0, 512]))
    ids = vocab.to_global("audio", torch.zeros(6, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="codebook order"):
        vocab.to_local("audio", ids.roll(1))
    with pytest.raises(InvalidArgumentError, match="unknown modality"):
        vocab.span("video")


def test_serialisation_round_trip(vocab: Vocab) -> None:
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert Vocab.from_dict(vocab.to_dict()).specials == vocab.specials


def test_invalid_layouts_raise() -> None:
    with pytest.raises(InvalidArgumentError, match="unique"):
        Vocab(10, [ModalitySpec("image", 4), ModalitySpec("image", 4)])
    with pytest.raises(InvalidArgumentError, match="text_size"):
        Vocab(0, [])
