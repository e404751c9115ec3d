from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.model import AnyGen
from anygen.tokenizers.simple import GridImageTokenizer
from anygen.tokenizers.text import TextTokenizer
from anygen.tokenizers.weights import load_state_strict
from anygen.types import ImageSegment, TextSegment


def test_text_only_forward_equals_plain_transformers(tiny_model: AnyGen) -> None:
    batch = tiny_model.processor([[TextSegment("a red")], [TextSegment("say")]],
                                 [[TextSegment(" circle")], [TextSegment(" hello there")]])
    ours = tiny_model(batch.input_ids, batch.attention_mask, batch.labels)
    plain = tiny_model.core(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    assert torch.allclose(ours.logits, plain.logits)
    assert torch.allclose(ours.loss, plain.loss, atol=1e-6)
    assert set(ours.losses) == {"text"} and torch.allclose(ours.losses["text"], plain.loss, atol=1e-6)


def test_losses_per_modality_and_weights(tiny_model: AnyGen) -> None:
    image = ImageSegment(torch.rand(3, 32, 32))
    batch = tiny_model.processor([[TextSegment("a red circle")]], [[image, TextSegment("done")]])
    out = tiny_model(batch.input_ids, batch.attention_mask, batch.labels)
    assert set(out.losses) == {"text", "image"}
    n_image, n_all = 16, int((batch.labels[:, 1:] != -100).sum())
    mixed = (out.losses["image"] * n_image + out.losses["text"] * (n_all - n_image)) / n_all
    assert torch.allclose(out.loss, mixed, atol=1e-5)
    heavy = tiny_model(batch.input_ids, batch.attention_mask, batch.labels, loss_weights={"image": 3.0}).loss
    expected = (3 * out.losses["image"] * n_image + out.losses["text"] * (n_all - n_image)) / n_all
    assert torch.allclose(heavy, expected, atol=1e-5)
    out.loss.backward()
    assert tiny_model.core.get_input_embeddings().weight.grad is not None


def test_save_load_round_trip(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = AnyGen.from_pretrained(tmp_path / "m")
    assert loaded.vocab == tiny_model.vocab
    for (k, a), (_, b) in zip(tiny_model.core.state_dict().items(), loaded.core.state_dict().items()):
        assert torch.equal(a, b), k
    ids = torch.tensor([[tiny_model.vocab.bos_id, 5, 6, 7]])
    assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)
    assert loaded.text_tokenizer.encode("a red circle") == tiny_model.text_tokenizer.encode("a red circle")
    assert isinstance(loaded.tokenizers["image"], GridImageTokenizer)
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["m"], "temporary directories left behind"


def test_fp16_save_halves_the_file_and_loads(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "a")
    tiny_model.save_pretrained(tmp_path / "b", dtype=torch.float16)
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("b") < 0.6 * size("a")
    loaded = AnyGen.from_pretrained(tmp_path / "b")
    w = tiny_model.core.get_input_embeddings().weight
    assert torch.allclose(loaded.core.get_input_embeddings().weight, w, atol=1e-3)


def test_failed_save_keeps_the_previous_model(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with torch.no_grad():
        tiny_model.core.model.norm.weight[0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        tiny_model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    AnyGen.from_pretrained(tmp_path / "m")


def _corrupt(directory: Path, how: str) -> None:
    weights = directory / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "not_safetensors":
        weights.write_bytes(b"PK\x03\x04 definitely a zip")
    elif how in ("missing_key", "shape", "int64", "nan"):
        tensors = load_file(str(weights))
        key = "model.norm.weight"
        if how == "missing_key":
            tensors.pop(key)
        elif how == "shape":
            tensors[key] = torch.zeros(3)
        elif how == "int64":
            tensors[key] = tensors[key].round().long()
        else:
            tensors[key][0] = float("nan")
        save_file(tensors, str(weights))
    elif how == "pickle":
        weights.unlink()
        (directory / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    elif how == "codebook":
        config = json.loads((directory / "config.json").read_text())
        config["vocab"]["modalities"][0][1] = 128
        (directory / "config.json").write_text(json.dumps(config))
    elif how == "config":
        (directory / "config.json").write_text("{not json")


@pytest.mark.parametrize("how, match", [
    ("truncated", "truncated"), ("not_safetensors", "safetensors"), ("missing_key", "missing keys"),
    ("shape", r"\(3,\)"), ("int64", "'model.norm.weight' is stored as torch.int64"),
    ("nan", "'model.norm.weight' holds NaN"), ("pickle", "pickle"), ("codebook", "codebook_size"),
    ("config", "config.json"),
])
def test_bad_checkpoints_raise_clear_errors(tiny_model: AnyGen, tmp_path: Path, how: str, match: str) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    _corrupt(tmp_path / "m", how)
    with pytest.raises(CheckpointError, match=match):
        AnyGen.from_pretrained(tmp_path / "m")


def test_integer_weights_are_never_cast_to_float() -> None:
    module = torch.nn.Linear(2, 2)
    state = {"weight": torch.ones(2, 2, dtype=torch.int64), "bias": torch.zeros(2, dtype=torch.float16)}
    with pytest.raises(CheckpointError, match="'weight' is stored as torch.int64"):
        load_state_strict(module, state, "w.safetensors")
    state["weight"] = torch.ones(2, 2, dtype=torch.float16)  # floating dtypes are cast as before
    load_state_strict(module, state, "w.safetensors")
    assert module.weight.dtype == torch.float32 and bool((module.weight == 1).all())


def test_missing_directory_and_small_core_raise(tiny_model: AnyGen, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        AnyGen.from_pretrained(tmp_path / "nope")
    with pytest.raises(InvalidArgumentError, match="embedding rows"):
        AnyGen(tiny_model.core, type(tiny_model.vocab)(10_000, []), tiny_model.text_tokenizer, {})


def test_loading_never_unpickles(tiny_model: AnyGen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_model.save_pretrained(tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(os, "system", refuse)
    AnyGen.from_pretrained(tmp_path / "m")


def test_misspelled_forward_keyword_is_a_type_error(tiny_model: AnyGen) -> None:
    ids = torch.tensor([[tiny_model.vocab.bos_id, 5, 6, 7]])
    with pytest.raises(TypeError, match="lables"):
        tiny_model(ids, lables=ids)
    assert tiny_model(ids, labels=ids).loss is not None


def test_a_text_tokenizer_larger_than_the_vocab_text_span_is_refused(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    bigger = TextTokenizer.train(["a much richer corpus of captions, numbers 0123456789 and words"] * 8, vocab_size=400)
    assert bigger.vocab_size > tiny_model.vocab.text_size
    bigger.save_pretrained(tmp_path / "m" / "text_tokenizer")
    with pytest.raises(CheckpointError, match=f"vocab.text_size={tiny_model.vocab.text_size}"):
        AnyGen.from_pretrained(tmp_path / "m")


def test_text_tokenizer_size_counts_its_highest_id_not_its_token_count(text_tokenizer: TextTokenizer) -> None:
    data = json.loads(text_tokenizer.backend.to_str())
    vocab = data["model"]["vocab"]
    vocab[max(vocab, key=vocab.get)] = 5000  # a gap: 300 tokens, the last one with id 5000
    gapped = TextTokenizer(Tokenizer.from_str(json.dumps(data)))
    assert gapped.vocab_size == 5001
