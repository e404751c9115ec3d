"""Fuzzing the loaders with hypothesis: whatever bytes a saved model's ``config.json`` / ``model.safetensors`` or a
media file holds, loading either returns a whole, valid result or raises the library's own error
(:class:`CheckpointError` / :class:`MediaError`), never a KeyError, AttributeError, a transformers or torch error,
and never a half-built model. Bounded: a few dozen examples per test, no deadline (the machine is shared).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import wave
from itertools import count
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anygen.audio import load_audio
from anygen.errors import CheckpointError, MediaError
from anygen.image import load_image
from anygen.model import AnyGen

# Seeded (derandomize) so that CI is repeatable; ~15 s for all four tests on 2 busy cores.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_names = count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2 ** 40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


# ---- the saved model ----------------------------------------------------------------------------------------------
@pytest.fixture()
def saved(tiny_model: AnyGen, tmp_path: Path) -> Path:
    tiny_model.save_pretrained(tmp_path / "original")
    shapes = {k: v.shape for k, v in tiny_model.core.state_dict().items()}
    (tmp_path / "shapes.json").write_text(json.dumps({k: list(v) for k, v in shapes.items()}))
    return tmp_path / "original"


def _load_with(saved: Path, name: str, data: bytes) -> None:
    """Load a copy of ``saved`` whose file ``name`` holds ``data``: a whole model or a CheckpointError."""
    directory = saved.parent / f"case-{next(_names)}"
    shutil.copytree(saved, directory)
    (directory / name).write_bytes(data)
    try:
        model = AnyGen.from_pretrained(directory)
    except CheckpointError:
        return
    finally:
        shutil.rmtree(directory)
    expected = json.loads((saved.parent / "shapes.json").read_text())
    state = model.core.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    ids = torch.tensor([[model.vocab.bos_id, 5, 6]])
    assert model(ids).logits.shape[:2] == (1, 3)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON tree (dict keys and list indices)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out = []
    for key, value in children:
        out.append(prefix + (key,))
        out.extend(_paths(value, prefix + (key,)))
    return out


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _mutate(tree: Any, path: tuple, action: str, value: Any) -> Any:
    tree = json.loads(json.dumps(tree))
    *parents, last = path
    node = tree
    for key in parents:
        node = node[key]
    if action == "delete":
        node.pop(last) if isinstance(node, dict) else node.pop(last)
    elif action == "replace":
        node[last] = value
    else:  # add an unknown key beside it
        if isinstance(node, dict):
            node[f"unknown_{value!s:.10}"] = value
        else:
            node.append(value)
    return tree


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, byte in flips:
        out[position % len(out)] = byte
    return bytes(out)


flips = st.lists(st.tuples(st.integers(0, 2 ** 20), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(data=st.data())
def test_any_config_json_loads_whole_or_raises_checkpoint_error(saved: Path, data: st.DataObject) -> None:
    original = (saved / "config.json").read_bytes()
    tree = json.loads(original)
    kind = data.draw(st.sampled_from(["bytes", "truncated", "flipped"] + ["mutated"] * 5))
    if kind == "bytes":
        mutated = data.draw(st.binary(max_size=300))
    elif kind == "truncated":
        mutated = original[: data.draw(st.integers(0, len(original) - 1))]
    elif kind == "flipped":
        mutated = _flip(original, data.draw(flips))
    else:
        paths = _paths(tree)
        own = [p for p in paths if p[0] != "core"]  # anygen's own sections get half the draws
        path = data.draw(st.sampled_from(own) | st.sampled_from(paths))
        action = data.draw(st.sampled_from(["delete", "replace", "add"]))
        # Random JSON, or a value found elsewhere in the same file (a path, a class name, a size ...).
        value = data.draw(json_values | st.sampled_from(paths).map(lambda p: _at(tree, p)) | st.just("missing/dir"))
        mutated = json.dumps(_mutate(tree, path, action, value)).encode()
    _load_with(saved, "config.json", mutated)


def _with_header(original: bytes, edit: Callable[[dict], None]) -> bytes:
    (length,) = struct.unpack("<Q", original[:8])
    header = json.loads(original[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + original[8 + length:]


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_any_weights_file_loads_whole_or_raises_checkpoint_error(saved: Path, data: st.DataObject) -> None:
    original = (saved / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", original[:8])
    kind = data.draw(st.sampled_from(["bytes", "truncated", "flipped", "header_flipped", "header", "header"]))
    if kind == "bytes":
        mutated = data.draw(st.binary(max_size=300))
    elif kind == "truncated":
        mutated = original[: data.draw(st.integers(0, len(original) - 1))]
    elif kind == "flipped":
        mutated = _flip(original, data.draw(flips))
    elif kind == "header_flipped":
        positions = st.tuples(st.integers(0, 8 + length - 1), st.integers(0, 255))
        mutated = _flip(original, data.draw(st.lists(positions, min_size=1, max_size=3)))
    else:
        header = json.loads(original[8:8 + length])
        key = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
        value = data.draw(st.sampled_from(["I64", "F16", "BF16", "BOOL", "U8", "F64"]) | json_values)

        def edit(h: dict) -> None:
            if field is None:
                h.pop(key)
            else:
                h[key][field] = value
        mutated = _with_header(original, edit)
    _load_with(saved, "model.safetensors", mutated)


# ---- media --------------------------------------------------------------------------------------------------------
def _image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


@FUZZ
@given(data=st.data())
def test_any_image_bytes_decode_or_raise_media_error(data: st.DataObject) -> None:
    original = IMAGES[data.draw(st.sampled_from(sorted(IMAGES)))]
    kind = data.draw(st.sampled_from(["bytes", "truncated", "flipped", "flipped"]))
    if kind == "bytes":
        mutated = data.draw(st.binary(max_size=200))
    elif kind == "truncated":
        mutated = original[: data.draw(st.integers(0, len(original) - 1))]
    else:
        mutated = _flip(original, data.draw(flips))
    try:
        image = load_image(mutated, max_pixels=4096 * 4096)
    except MediaError:
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


def _wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes((np.sin(np.arange(800) / 5) * 8000).astype("<i2").tobytes())
    return buffer.getvalue()


WAV = _wav_bytes()


@FUZZ
@given(data=st.data())
def test_any_audio_file_reads_or_raises_media_error(tmp_path: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["bytes", "truncated", "flipped", "flipped"]))
    if kind == "bytes":
        mutated = data.draw(st.binary(max_size=200))
    elif kind == "truncated":
        mutated = WAV[: data.draw(st.integers(0, len(WAV) - 1))]
    else:
        mutated = _flip(WAV, data.draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), min_size=1,
                                                 max_size=4)))
    path = tmp_path / f"clip-{next(_names)}.wav"
    path.write_bytes(mutated)
    try:
        waveform, rate = load_audio(path, sample_rate=None)
    except MediaError:
        return
    assert waveform.dim() == 1 and waveform.numel() > 0 and rate > 0
    assert bool(torch.isfinite(waveform).all())
