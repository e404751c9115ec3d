"""Write the corpus as sharded JSONL plus media files, and read it back.

Layout of a built corpus directory::

    manifest.json                 config, per-split shard list and item counts (written last)
    train-00000.jsonl ...         one item per line: id, task, prompt, target, meta
    media/train/<id>-p0.png ...   media of prompt (p) and target (t) segments: PNG images, 16-bit PCM WAV audio

A segment in JSONL is ``{"type": "text", "text": ...}``, ``{"type": "image", "path": ...}`` or
``{"type": "audio", "path": ..., "sample_rate": ...}`` (paths relative to the corpus directory). The directory is
assembled under a temporary name and renamed into place, so a crash never leaves a half-written corpus.

Example:
    >>> import tempfile
    >>> from anygen.data.corpus import DataConfig
    >>> from anygen.data.shards import read_items, write_corpus
    >>> out = tempfile.mkdtemp() + "/corpus"
    >>> _ = write_corpus(DataConfig(sizes={"text": 3}), out)
    >>> [item["task"] for item in read_items(out, "train")]
    ['text', 'text', 'text']
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from anygen.audio import load_audio, save_audio
from anygen.data.corpus import DataConfig, Item, build_split
from anygen.data.shapes import SPLITS
from anygen.errors import InvalidArgumentError, MediaError
from anygen.types import AudioSegment, ImageSegment, TextSegment

FORMAT_VERSION = 1


def _encode_segment(segment: Any, root: Path, stem: str) -> dict[str, Any]:
    if isinstance(segment, TextSegment):
        return {"type": "text", "text": segment.text}
    if isinstance(segment, ImageSegment):
        rel = f"{stem}.png"
        image = segment.image
        if not isinstance(image, Image.Image):
            raise InvalidArgumentError(f"{stem}: image segments must hold PIL images to be written")
        image.save(root / rel, format="PNG")
        return {"type": "image", "path": rel}
    if isinstance(segment, AudioSegment):
        rel = f"{stem}.wav"
        save_audio(root / rel, segment.waveform, segment.sample_rate)
        return {"type": "audio", "path": rel, "sample_rate": segment.sample_rate}
    raise InvalidArgumentError(f"{stem}: cannot write segment of type {type(segment).__name__}")


def encode_item(item: Item, root: Path, split: str) -> dict[str, Any]:
    """Write an item's media under ``root/media/<split>/`` and return its JSON form."""
    (root / "media" / split).mkdir(parents=True, exist_ok=True)
    record = {"id": item["id"], "task": item["task"], "meta": item["meta"]}
    for side, letter in (("prompt", "p"), ("target", "t")):
        record[side] = [_encode_segment(seg, root, f"media/{split}/{item['id']}-{letter}{k}")
                        for k, seg in enumerate(item[side])]
    return record


def decode_segment(record: dict[str, Any], root: Path) -> Any:
    """Inverse of the segment encoding: loads the media file it points to."""
    kind = record.get("type")
    if kind == "text":
        return TextSegment(record["text"])
    path = root / record["path"]
    if kind == "image":
        try:
            with Image.open(path) as image:
                return ImageSegment(image.convert("RGB"))
        except OSError as exc:
            raise MediaError(f"cannot read image {path}: {exc}") from exc
    if kind == "audio":
        waveform, sr = load_audio(path, sample_rate=None)
        return AudioSegment(waveform, sr)
    raise MediaError(f"unknown segment type {kind!r} in corpus {root}")


def _write_split(items: list[Item], root: Path, split: str, shard_size: int) -> list[str]:
    shards = []
    for start in range(0, max(len(items), 1), shard_size):
        name = f"{split}-{start // shard_size:05d}.jsonl"
        lines = [json.dumps(encode_item(item, root, split), sort_keys=True) for item in items[start:start + shard_size]]
        (root / name).write_text("".join(line + "\n" for line in lines))
        shards.append(name)
    return shards


def write_corpus(cfg: DataConfig, out: str | Path, splits: tuple[str, ...] = SPLITS, shard_size: int = 1000,
                 overwrite: bool = False) -> dict[str, Any]:
    """Build ``splits`` of the corpus and write them to ``out``; returns the manifest.

    Raises:
        InvalidArgumentError: ``out`` exists and is not empty while ``overwrite`` is False, or a split is unknown.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidArgumentError(f"out={str(out)!r} exists and is not empty; pass overwrite=True (--overwrite)")
    bad = [s for s in splits if s not in SPLITS]
    if bad or shard_size < 1:
        raise InvalidArgumentError(f"splits must be among {list(SPLITS)} (got {list(splits)}); shard_size >= 1")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        manifest = {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg), "splits": {}}
        for split in splits:
            items = build_split(cfg, split)
            tasks: dict[str, int] = {}
            for item in items:
                tasks[item["task"]] = tasks.get(item["task"], 0) + 1
            manifest["splits"][split] = {"shards": _write_split(items, staging, split, shard_size),
                                         "count": len(items), "tasks": dict(sorted(tasks.items()))}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a built corpus (clear error when ``root`` is not one)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise InvalidArgumentError(f"{root} is not a built corpus (no manifest.json); run `anygen data build`")
    return json.loads(path.read_text())


def iter_records(root: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """JSON records of ``split``, shard by shard, media not loaded."""
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise InvalidArgumentError(f"split={split!r} is not in corpus {root}; it has {list(manifest['splits'])}")
    for shard in manifest["splits"][split]["shards"]:
        with open(Path(root) / shard, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def decode_record(record: dict[str, Any], root: str | Path) -> Item:
    """A JSON record with its media loaded into segments."""
    root = Path(root)
    return {"id": record["id"], "task": record["task"], "meta": record["meta"],
            "prompt": [decode_segment(s, root) for s in record["prompt"]],
            "target": [decode_segment(s, root) for s in record["target"]]}


def read_items(root: str | Path, split: str) -> list[Item]:
    """Every item of ``split`` with media loaded."""
    return [decode_record(r, root) for r in iter_records(root, split)]
