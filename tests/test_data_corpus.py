"""The mixed corpus: determinism, split hygiene, JSONL shards round trip, Dataset classes and `anygen data build`."""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anygen.data import cli as data_cli
from anygen.data.corpus import TASKS, DataConfig, build_split, build_task
from anygen.data.dataset import ShardedDataset, SyntheticDataset, collate_items
from anygen.data.shards import read_items, read_manifest, write_corpus
from anygen.data.speech import Voice, render_speech, voices_for_split
from anygen.errors import InvalidArgumentError
from anygen.types import AudioSegment, ImageSegment, TextSegment

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
SMALL = {"text_to_image": 6, "image_to_text": 4, "edit": 3, "text_to_melody": 2, "melody_to_text": 2, "text": 2}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_write_is_byte_deterministic_and_round_trips(tmp_path):
    cfg = DataConfig(seed=3, sizes=SMALL, eval_fraction=0.5)
    write_corpus(cfg, tmp_path / "a")
    write_corpus(cfg, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_corpus(DataConfig(seed=4, sizes=SMALL, eval_fraction=0.5), tmp_path / "c")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    manifest = read_manifest(tmp_path / "a")
    assert manifest["splits"]["train"]["count"] == sum(SMALL.values())
    memory = build_split(cfg, "train")
    loaded = read_items(tmp_path / "a", "train")
    assert [i["id"] for i in loaded] == [i["id"] for i in memory]
    for mem, disk in zip(memory, loaded):
        for a, b in zip(mem["prompt"] + mem["target"], disk["prompt"] + disk["target"]):
            assert type(a) is type(b)
            if isinstance(a, ImageSegment):
                assert a.image.tobytes() == b.image.tobytes()
            elif isinstance(a, AudioSegment):
                assert a.sample_rate == b.sample_rate and torch.allclose(a.waveform, b.waveform, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left


def test_refuses_to_overwrite_without_flag(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(InvalidArgumentError, match="overwrite"):
        write_corpus(DataConfig(sizes={"text": 1}), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_task_streams_are_independent():
    a = build_task(DataConfig(sizes={"text": 3, "edit": 2}), "train", "text")
    b = build_task(DataConfig(sizes={"text": 3, "edit": 9}), "train", "text")
    assert [i["target"][0].text for i in a] == [i["target"][0].text for i in b]


def test_datasets_and_task_filter(tmp_path):
    cfg = DataConfig(sizes=SMALL)
    ds = SyntheticDataset(cfg, "validation", tasks=["text_to_image", "edit"])
    assert {item["task"] for item in ds} == {"text_to_image", "edit"}
    write_corpus(cfg, tmp_path / "c", splits=("validation",), shard_size=2)
    sharded = ShardedDataset(tmp_path / "c", "validation")
    assert len(sharded) == len(SyntheticDataset(cfg, "validation")) and len(read_manifest(tmp_path / "c")
                                                                            ["splits"]["validation"]["shards"]) > 1
    item = sharded[0]
    assert set(item) == {"id", "task", "prompt", "target", "meta"} and collate_items([item]) == [item]
    with pytest.raises(InvalidArgumentError, match="split"):
        ShardedDataset(tmp_path / "c", "train")
    with pytest.raises(InvalidArgumentError, match="unknown task"):
        SyntheticDataset(cfg, tasks=["painting"])
    with pytest.raises(InvalidArgumentError, match="sizes"):
        DataConfig(sizes={"painting": 3})


def test_test_split_holds_out_attribute_combinations():
    cfg = DataConfig(sizes={"text_to_image": 60}, digit_fraction=0.0, eval_fraction=1.0)
    train = {tuple(sorted((o["color"], o["shape"]) for o in i["meta"]["scene"]["objects"]))
             for i in build_split(cfg, "train")}
    test = {tuple(sorted((o["color"], o["shape"]) for o in i["meta"]["scene"]["objects"]))
            for i in build_split(cfg, "test")}
    assert not train & test


@needs_espeak
def test_speech_is_deterministic_short_and_voice_split():
    voice = Voice("en-us", "f1", 175, 60)
    wave = render_speech("triangle", voice)
    assert torch.equal(wave, render_speech("triangle", voice)) and 0.2 * 16000 < wave.shape[0] <= 2 * 16000
    assert not set(voices_for_split("train")) & set(voices_for_split("test"))
    items = build_task(DataConfig(sizes={"speech_to_text": 4}), "test", "speech_to_text")
    assert all(Voice(**i["meta"]["voice"]).held_out() for i in items)
    assert all(isinstance(i["prompt"][0], AudioSegment) and isinstance(i["target"][0], TextSegment) for i in items)


@needs_espeak
def test_every_task_builds():
    items = build_split(DataConfig(sizes={t: 2 for t in TASKS}), "train")
    assert sorted({i["task"] for i in items}) == sorted(TASKS) and len(items) == 2 * len(TASKS)


def test_cli_build(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    args = parser.parse_args(["build", "--out", str(tmp_path / "out"), "--seed", "1", "--scale", "0",
                              "--size", "text=3", "--size", "edit=2", "--splits", "train,test"])
    assert data_cli.main(args) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["config"]["seed"] == 1 and manifest["splits"]["train"]["tasks"] == {"edit": 2, "text": 3}
    assert "wrote" in capsys.readouterr().out
    bad = parser.parse_args(["build", "--out", str(tmp_path / "x"), "--size", "paint=3"])
    with pytest.raises(InvalidArgumentError, match="--size"):
        data_cli.main(bad)


def test_default_config_yaml_loads():
    from anygen.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "data" / "default.yaml"
    cfg = load_config(DataConfig, path)
    assert cfg == DataConfig() and np.isclose(cfg.eval_fraction, 0.1)


def test_category_weights_reweight_training_scenes_only():
    def categories(cfg: DataConfig, split: str) -> list[str]:
        items = build_task(cfg, split, "text_to_image")
        return [i["meta"]["category"] for i in items if i["meta"]["source"] == "shapes"]

    uniform = DataConfig(sizes={"text_to_image": 300}, digit_fraction=0.0)
    weighted = DataConfig(sizes={"text_to_image": 300}, digit_fraction=0.0,
                          category_weights={"counting": 5.0, "single_object": 0.0})
    train = categories(weighted, "train")
    assert "single_object" not in train and train.count("counting") > 2 * categories(uniform, "train").count("counting")
    assert categories(weighted, "test") == categories(uniform, "test")  # evaluation splits stay uniform
    with pytest.raises(InvalidArgumentError, match="category_weights has unknown"):
        DataConfig(category_weights={"pose": 1.0})
    with pytest.raises(InvalidArgumentError, match="category_weights.counting"):
        DataConfig(category_weights={"counting": -1.0})


def test_chat_edits_ask_after_the_picture_drawn_for_a_request():
    from anygen.data.language import parse_text, satisfies
    from anygen.data.scenes import Scene
    from anygen.data.shapes import allowed_combo

    cfg = DataConfig(sizes={"chat_edit": 12}, eval_fraction=1.0)
    assert "chat_edit" not in DataConfig().sizes  # the default corpus has none
    for split in ("train", "test"):
        for item in build_task(cfg, split, "chat_edit"):
            request, _, instruction = item["prompt"]
            assert [type(s) for s in item["prompt"]] == [TextSegment, ImageSegment, TextSegment]
            assert [type(s) for s in item["target"]] == [ImageSegment]
            source = Scene.from_dict(item["meta"]["source"])
            assert satisfies(source, parse_text(request.text), exact_counts=True)  # the picture is what was asked
            assert instruction.text and instruction.text != request.text
            pairs = {(o.color, o.shape) for o in source.objects}
            if split == "train":  # the held-out (colour, shape) pairs stay out of training
                assert all(allowed_combo(c, s, "train") for c, s in pairs)
