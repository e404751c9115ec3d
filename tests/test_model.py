from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from anygen import saved_model
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
        config["vocab"]["modalities"][0][1] = 8  # fits the core, but not the image tokenizer
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
    (tmp_path / "other").mkdir()
    with pytest.raises(CheckpointError, match="other is not an anygen model folder: it has neither config.json nor "
                                              "model.safetensors .*'anygen-tiny'"):
        AnyGen.from_pretrained(tmp_path / "other")
    tiny_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        AnyGen.from_pretrained(tmp_path / "m")
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


def _drop(key: str):
    return lambda c: c.pop(key)


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (_drop("vocab"), "missing key 'vocab'"),
    (lambda c: [c], "the top level must be a JSON object, got list"),
    (_set("core", "model_type", "no-such-model"), "core.model_type='no-such-model' is not a causal-LM type"),
    (_set("core", "model_type", 7), "core.model_type=7"),
    (_set("vocab", "text_size", "300"), "vocab.text_size must be an integer, got str '300'"),
    (_set("vocab", "text_size", True), "vocab.text_size must be an integer, got bool"),
    (_set("core", "hidden_size", "64"), "core.hidden_size must be an integer, got str '64'"),
    (_set("core", "rms_norm_eps", [1]), "core.rms_norm_eps must be a number"),
    (_set("vocab", "modalities", [["image", "64", 1]]), r"vocab.modalities\[0\]\[1\] \(codebook_size\)"),
    (_set("vocab", "modalities", [["image", 0, 1]]), r"\(codebook_size\)=0 must be >= 1"),
    (_set("vocab", "pad_to", 0), "vocab.pad_to=0 must be >= 1"),
    (_set("tokenizers", [], ), "tokenizers must be an object"),
    (_set("extra", 1), "unknown key 'extra'"),
    (_set("vocab", "bogus", 1), "unknown key 'vocab.bogus'"),
    (_set("tokenizers", "image", "colour", "red"), "unknown key 'tokenizers.image.colour'"),
    (_drop("text_tokenizer"), "missing key 'text_tokenizer'"),
    (_set("version", 2), "not an anygen v1 config"),
    (_set("adapters", [{"first_id": 1}]), r"missing key 'adapters\[0\].end_id'"),
    (_set("core", "hidden_size", 128), "model.safetensors: key 'model.embed_tokens.weight' has shape"),
    (_set("core", "num_hidden_layers", 10 ** 9), "core.num_hidden_layers=1000000000 but .* holds only"),
    (_set("vocab", "text_size", 10 ** 12), r"lays out 10000000\d+ ids but the core has 448 embedding rows"),
])
def test_malformed_config_json_names_the_file_and_the_key(tiny_model: AnyGen, tmp_path: Path, edit, match) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    replaced = edit(config)
    path.write_text(json.dumps(replaced if isinstance(replaced, list) else config))
    with pytest.raises(CheckpointError, match=match) as info:
        AnyGen.from_pretrained(tmp_path / "m")
    assert "config.json" in str(info.value) or "model.safetensors" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("text_tokenizer", "../outside"), ("text_tokenizer", "/etc"), ("text_tokenizer", "a/../../b"),
    ("text_tokenizer", "C:\\tokenizer"), ("text_tokenizer", ""), ("image", "..\\..\\etc"),
])
def test_tokenizer_paths_must_stay_inside_the_model_directory(tiny_model: AnyGen, tmp_path: Path, key: str,
                                                              value: str) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_model.text_tokenizer.save_pretrained(tmp_path / "outside")  # a loadable tokenizer the path points at
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    if key == "image":
        config["tokenizers"]["image"]["path"] = value
    else:
        config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="must be a relative path inside the model directory") as info:
        AnyGen.from_pretrained(tmp_path / "m")
    assert str(path) in str(info.value)


def test_non_finite_json_numbers_are_refused(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_text(re.sub(r'"text_size": \d+', '"text_size": NaN', path.read_text()))
    with pytest.raises(CheckpointError, match="NaN is not a JSON number"):
        AnyGen.from_pretrained(tmp_path / "m")


# ---- saving never loses what is at the target -------------------------------------------------------------------
def _norm(model: AnyGen) -> torch.Tensor:
    return model.core.model.norm.weight.detach().clone()


def test_saving_refuses_a_foreign_directory_or_a_file_unless_overwrite(tiny_model: AnyGen, tmp_path: Path) -> None:
    folder, file = tmp_path / "photos", tmp_path / "notes.txt"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not a model")
    file.write_text("keep me")
    for target in (folder, file):
        with pytest.raises(CheckpointError, match=f"{re.escape(str(target))} is a .*overwrite=True"):
            tiny_model.save_pretrained(target)
    assert (folder / "holiday.jpg").read_bytes() == b"not a model" and file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]
    for target in (folder, file):
        tiny_model.save_pretrained(target, overwrite=True)
        assert torch.equal(_norm(AnyGen.from_pretrained(target)), _norm(tiny_model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def test_saving_into_an_empty_folder_or_over_a_model_needs_no_overwrite(tiny_model: AnyGen, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    tiny_model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        tiny_model.core.model.norm.weight += 1
    tiny_model.save_pretrained(tmp_path / "m")
    assert torch.equal(_norm(AnyGen.from_pretrained(tmp_path / "m")), _norm(tiny_model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


class Killed(BaseException):
    """The process died here: nothing after it runs (no except or finally block may touch the disk)."""


def _kill_at(monkeypatch: pytest.MonkeyPatch, call: int) -> list[int]:
    """Make the ``call``-th os.replace/os.rename (0: the write of the weights) die, and every file operation
    after it fail the same way; returns the running count of renames."""
    counter = [0]
    real_replace = os.replace

    def die(message: str) -> None:
        for name in ("replace", "rename", "remove", "unlink", "rmdir"):
            monkeypatch.setattr(os, name, dead)
        monkeypatch.setattr(shutil, "rmtree", dead)
        raise Killed(message)

    def dead(*args, **kwargs):
        raise Killed("the process is gone")

    def replace(*args, **kwargs):
        counter[0] += 1
        if counter[0] == call:
            die(f"killed at rename #{call}")
        return real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    if call == 0:
        monkeypatch.setattr(saved_model, "save_file", lambda *a, **k: die("killed while writing the weights"))
    return counter


def test_a_save_killed_at_any_point_loses_nothing(tiny_model: AnyGen, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_model.save_pretrained(tmp_path / "probe")
    with monkeypatch.context() as patch:
        renames = _kill_at(patch, call=-1)
        tiny_model.save_pretrained(tmp_path / "probe")
    assert renames[0] >= 2, "a replace moves the old copy aside, then the new one in"
    for call in range(renames[0] + 1):
        folder = tmp_path / f"crash-{call}"
        target = folder / "m"
        tiny_model.save_pretrained(target)
        old = _norm(tiny_model)
        with torch.no_grad():
            tiny_model.core.model.norm.weight += 1
        with monkeypatch.context() as patch:
            _kill_at(patch, call)
            with pytest.raises(Killed):
                tiny_model.save_pretrained(target)
        loaded = _norm(AnyGen.from_pretrained(target))  # recovers a copy that a crash left beside the target
        assert torch.equal(loaded, old) or torch.equal(loaded, _norm(tiny_model)), call
        tiny_model.save_pretrained(target)  # the next save removes every leftover
        assert [p.name for p in folder.iterdir()] == ["m"], call
        assert torch.equal(_norm(AnyGen.from_pretrained(target)), _norm(tiny_model)), call


def test_a_save_killed_between_the_two_renames_is_recovered_on_load(tiny_model: AnyGen, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m"
    tiny_model.save_pretrained(target)
    with torch.no_grad():
        tiny_model.core.model.norm.weight += 1
    with monkeypatch.context() as patch:
        _kill_at(patch, 2)  # the old copy is aside, the new one not yet in place
        with pytest.raises(Killed):
            tiny_model.save_pretrained(target)
    assert not target.exists() and len(list(tmp_path.iterdir())) == 2
    assert torch.equal(_norm(AnyGen.from_pretrained(target)), _norm(tiny_model))  # the new, complete copy


def test_stale_temporaries_of_dead_saves_are_removed_and_nothing_else(tiny_model: AnyGen, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    partial = tmp_path / f".m.anygen-new-{dead_pid}-0123abcd"
    (partial / "copy").mkdir(parents=True)
    (partial / "marker.json").write_text(json.dumps({"target": "m", "pid": dead_pid}))
    (partial / "copy" / "model.safetensors").write_bytes(b"half a file")
    unmarked = tmp_path / f".m.anygen-new-{dead_pid}-89abcdef"  # our pattern, but no marker: not ours
    unmarked.mkdir()
    (unmarked / "thesis.tex").write_text("keep")
    running = tmp_path / ".m.anygen-new-1-fedcba98"  # pid 1 is alive: a save in progress elsewhere
    (running / "copy").mkdir(parents=True)
    (running / "marker.json").write_text(json.dumps({"target": "m", "pid": 1}))
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", unmarked.name, running.name])


@pytest.mark.parametrize("path", ["missing/dir", "text_tokenizer", "tokenizers/audio"])
def test_a_tokenizer_entry_pointing_at_the_wrong_folder_is_a_checkpoint_error(tiny_model: AnyGen, tmp_path: Path,
                                                                             path: str) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["tokenizers"]["image"]["path"] = path
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"tokenizers.image \\(GridImageTokenizer at '{path}'\\)"):
        AnyGen.from_pretrained(tmp_path / "m")
