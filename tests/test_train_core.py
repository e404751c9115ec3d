"""The core recipe: it learns, resumes to the same weights, drops conditions as guidance expects, validates its
config, and runs on two processes over gloo."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anygen.config import load_config
from anygen.core import CoreConfig
from anygen.data.corpus import DataConfig, build_split
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.model import AnyGen
from anygen.processor import drop_condition
from anygen.tokenizers.simple import GridImageTokenizer, MuLawAudioTokenizer
from anygen.tokenizers.text import TextTokenizer
from anygen.training import core_recipe as recipe
from anygen.training.checkpoint import (
    committed_checkpoints,
    latest_checkpoint,
)
from anygen.training.core_data import (
    RowKey,
    TokenizedCorpus,
    collate,
    draw_rows,
    split_by_length,
    target_tokens,
    tokenize_corpus,
)
from anygen.training.core_recipe import CoreTrainConfig
from anygen.training.stream import CorpusRows, Prefetcher, StreamRows

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "train" / "smoke.yaml"


def smoke_config(out_dir: Path, *overrides: str) -> CoreTrainConfig:
    return load_config(CoreTrainConfig, SMOKE, [f"train.out_dir={out_dir}", *overrides])


def records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def batch_loss(model: AnyGen, batch) -> float:
    with torch.no_grad():
        return float(model.eval()(batch.input_ids, batch.attention_mask, batch.labels).loss)


def test_training_reduces_the_loss_on_a_fixed_batch(tmp_path):
    config = smoke_config(tmp_path, "optim.steps=16", "train.checkpoint_every=8", "train.log_every=4")
    result = recipe.main(config)
    assert result.complete and result.step == 16 and result.tokens_per_second > 0
    trained = AnyGen.from_pretrained(result.final_dir)
    initial = recipe.build_model(config, trained.text_tokenizer)  # the same seeded initialisation as the run
    # Rows of a step far past the run: fresh items the model never saw.
    _, source = recipe.model_and_rows(config, tmp_path / "data", False)
    batch = collate(source.rows(RowKey(10_000, 0)), trained.vocab)
    assert batch_loss(trained, batch) < batch_loss(initial, batch) - 0.5
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == [4, 8, 12, 16]
    assert set(logged[-1]["losses"]) == {"text", "image", "audio"} and logged[-1]["lr"] < logged[0]["lr"] / 5
    # The committed corpus belongs to this config: another corpus in the same out_dir is refused.
    with pytest.raises(InvalidArgumentError, match="train.out_dir"):
        recipe.main(smoke_config(tmp_path, "data.corpus.seed=1"))


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("source, workers", [("stream", 0), ("corpus", 0), ("stream", 2)])
def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path, monkeypatch, source, workers):
    overrides = ("optim.steps=6", "train.checkpoint_every=3", "train.log_every=1", f"data.source={source}",
                 f"data.workers={workers}")
    reference = recipe.main(smoke_config(tmp_path / "a", *overrides))

    cls = StreamRows if source == "stream" else CorpusRows
    rows = cls.rows

    def crash_at_step_4(self, key):
        if key.step == 4:
            raise Crash("killed during step 4")
        return rows(self, key)

    monkeypatch.setattr(cls, "rows", crash_at_step_4)
    with pytest.raises(Crash):
        recipe.main(smoke_config(tmp_path / "b", *overrides))
    assert [p.name for p in committed_checkpoints(tmp_path / "b" / "checkpoints")] == ["step-00000003"]
    monkeypatch.setattr(cls, "rows", rows)
    resumed = recipe.main(smoke_config(tmp_path / "b", *overrides))

    assert resumed.step == 6 and resumed.complete
    want, got = (load_file(str(Path(r.final_dir) / "model.safetensors")) for r in (reference, resumed))
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    # Records logged after the checkpoint by the crashed run are replaced, not duplicated.
    assert [r["step"] for r in records(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in records(tmp_path / "b")] == pytest.approx([r["loss"] for r in records(tmp_path / "a")])


def test_max_minutes_stops_with_a_checkpoint_and_the_same_command_continues(tmp_path):
    budget = ("optim.steps=4", "train.max_minutes=1e-9", "train.log_every=1")
    first = recipe.main(smoke_config(tmp_path, *budget))
    assert (first.step, first.complete, first.final_dir) == (1, False, None)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000001"
    assert recipe.main(smoke_config(tmp_path, *budget)).step == 2
    last = recipe.main(smoke_config(tmp_path, "optim.steps=4", "train.log_every=1"))
    assert last.complete and last.step == 4 and Path(last.final_dir, "model.safetensors").is_file()
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3, 4]


def test_missing_tokenizer_weights_are_named(tmp_path):
    config = smoke_config(tmp_path, f"model.tokenizers.image={{kind: image_vq, path: {tmp_path / 'nothing'}}}")
    with pytest.raises(CheckpointError, match="model.tokenizers.image.path"):
        recipe.main(config)


def test_tensorboard_without_the_package_is_refused_before_any_work(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(InvalidArgumentError, match="train.log_with"):
        recipe.main(smoke_config(tmp_path, "train.log_with=[jsonl, tensorboard]"))
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def edit_corpus() -> tuple[list[dict], AnyGen, TokenizedCorpus]:
    items = build_split(DataConfig(image_size=32, eval_fraction=0.0, sizes={
        "text_to_image": 3, "edit": 4, "text_to_melody": 2, "image_to_text": 2, "text": 1}), "train")
    texts = [s.text for item in items for s in (*item["prompt"], *item["target"]) if s.modality == "text"]
    model = AnyGen.create(TextTokenizer.train(texts, vocab_size=300),
                          {"image": GridImageTokenizer(cell=8), "audio": MuLawAudioTokenizer(sample_rate=16000)},
                          CoreConfig(32, 1, 2, 1, 64, 512))
    return items, model, tokenize_corpus(items, model.processor)


def test_condition_dropout_gives_the_unconditional_prompts(edit_corpus):
    items, model, corpus = edit_corpus
    encode = model.processor.encode
    for i, item in enumerate(items):
        assert corpus.prompt[i] == encode(item["prompt"]) and corpus.target[i] == encode(item["target"])
        task = item["task"]
        if task in ("text_to_image", "text_to_melody", "edit"):  # the prompts the pipelines' guidance builds
            assert corpus.uncond[i] == encode(drop_condition(item["prompt"]))
        else:
            assert corpus.uncond[i] is None
        if task == "edit":
            assert corpus.uncond_all[i] == encode(drop_condition(item["prompt"], ("text", "image"))) == []
            assert corpus.uncond[i] == encode(item["prompt"][1:]) and corpus.uncond[i] != corpus.prompt[i]  # the image
    kinds = {"prompt": 0, "uncond": 0, "uncond_all": 0}
    edits = corpus.indices("edit")
    for step in range(150):
        for prompt, target in draw_rows(corpus, {"edit": 1.0}, 0.2, 8, RowKey(step, 0)):
            i = next(j for j in edits if corpus.target[j] == target)
            kinds[next(k for k in kinds if getattr(corpus, k)[i] == prompt)] += 1
    total = sum(kinds.values())
    assert kinds["uncond"] / total == pytest.approx(0.2, abs=0.04)
    assert kinds["uncond_all"] / total == pytest.approx(0.1, abs=0.03)
    no_dropout = draw_rows(corpus, {"text_to_image": 1.0}, 0.0, 32, RowKey(0, 0))
    assert all(prompt for prompt, _ in no_dropout)


def test_batches_depend_only_on_seed_step_and_process(edit_corpus):
    _, model, corpus = edit_corpus
    weights = {"text_to_image": 1.0, "edit": 2.0, "text": 0.5}
    rows = draw_rows(corpus, weights, 0.1, 8, RowKey(5, 0))
    assert rows == draw_rows(corpus, weights, 0.1, 8, RowKey(5, 0))
    assert rows != draw_rows(corpus, weights, 0.1, 8, RowKey(5, 1)) != draw_rows(corpus, weights, 0.1, 8, RowKey(6, 0))
    assert rows != draw_rows(corpus, weights, 0.1, 8, RowKey(5, 0), seed=1)
    parts = split_by_length(rows, 4)
    assert sorted(map(str, rows)) == sorted(str(row) for part in parts for row in part)
    lengths = [[len(p) + len(t) for p, t in part] for part in parts]
    assert [len(part) for part in parts] == [2, 2, 2, 2]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(lengths))
    batch = collate(parts[0], model.vocab)
    assert target_tokens(batch) == sum(len(t) + 1 for _, t in parts[0])  # the target and its eos
    batch = collate(rows, model.vocab)
    for (prompt, target), ids, labels in zip(rows, batch.input_ids.tolist(), batch.labels.tolist()):
        n = len(prompt) + len(target) + 2
        assert ids[:n] == [model.vocab.bos_id, *prompt, *target, model.vocab.eos_id]
        assert labels[:n] == [-100] * (1 + len(prompt)) + [*target, model.vocab.eos_id]
        assert set(labels[n:]) <= {-100}


def stream(model: AnyGen, seed: int = 0, weights: dict | None = None) -> StreamRows:
    weights = weights or {"text_to_image": 1.0, "edit": 1.0, "text_to_melody": 1.0, "text": 0.5}
    return StreamRows(DataConfig(image_size=32), model.processor, weights, 0.2, rows=6, seed=seed, context=512)


def test_the_stream_depends_only_on_seed_step_and_process(edit_corpus):
    _, model, _ = edit_corpus
    rows = stream(model).rows(RowKey(5, 0))
    assert len(rows) == 6 and rows == stream(model).rows(RowKey(5, 0))
    assert rows != stream(model).rows(RowKey(5, 1)) != stream(model).rows(RowKey(6, 0))
    assert rows != stream(model, seed=1).rows(RowKey(5, 0))
    # Fresh items every step: no target repeats across 20 steps of text-to-image.
    t2i = stream(model, weights={"text_to_image": 1.0})
    targets = [tuple(t) for step in range(20) for _, t in t2i.rows(RowKey(step, 0))]
    assert len(set(targets)) == len(targets)


def test_worker_processes_compute_the_rows_the_main_process_would(edit_corpus):
    _, model, _ = edit_corpus
    source = stream(model)
    rng = torch.get_rng_state()
    with Prefetcher(source.rows, start=2, stop=6, process=1, workers=2) as upcoming:
        got = [upcoming.get(step) for step in range(2, 6)]
    assert torch.equal(torch.get_rng_state(), rng)  # the training's RNG stream is not drawn from
    assert got == [source.rows(RowKey(step, 1)) for step in range(2, 6)]


def test_the_stream_serves_chat_edits_with_the_picture_inside_the_prompt(edit_corpus):
    _, model, _ = edit_corpus
    begin, end = model.vocab.begin_id("image"), model.vocab.end_id("image")
    for prompt, target in stream(model, weights={"chat_edit": 1.0}).rows(RowKey(0, 0)):
        # request text, <image> codes </image>, instruction text; the target is one picture
        assert prompt.count(begin) == prompt.count(end) == 1 and prompt.index(begin) > 0
        assert prompt.index(end) < len(prompt) - 1 and target.count(begin) == 1


def test_the_stream_drops_conditions_like_the_corpus(edit_corpus):
    _, model, _ = edit_corpus
    source = stream(model, weights={"edit": 1.0})
    kinds = {"prompt": 0, "uncond": 0, "uncond_all": 0}
    for step in range(40):
        corpus = tokenize_corpus(source.items(RowKey(step, 0)), model.processor)
        for i, (prompt, target) in enumerate(source.rows(RowKey(step, 0))):
            assert target == corpus.target[i]
            kinds[next(k for k in kinds if getattr(corpus, k)[i] == prompt)] += 1
    total = sum(kinds.values())
    assert kinds["uncond"] / total == pytest.approx(0.2, abs=0.07)
    assert kinds["uncond_all"] / total == pytest.approx(0.1, abs=0.05)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_prefetcher_keeps_order_and_raises_the_workers_error(workers):
    def rows(key: RowKey) -> list:
        if key.step == 7:
            raise Crash("bad step")
        return [([key.step], [key.process])]

    with Prefetcher(rows, start=3, stop=10, process=1, depth=2, workers=workers) as upcoming:
        assert [upcoming.get(step) for step in range(3, 7)] == [[([s], [1])] for s in range(3, 7)]
        with pytest.raises(InvalidArgumentError, match="out of order"):
            upcoming.get(9)
        with pytest.raises(Crash, match="bad step"):
            upcoming.get(7)


@pytest.mark.parametrize("override, key", [
    ("optim.lr=0", "optim.lr"),
    ("optim.min_lr=0.1", "optim.min_lr"),
    ("optim.grad_accum=0", "optim.grad_accum"),
    ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("data.cond_dropout=0.9", "data.cond_dropout"),
    ("data.workers=-1", "data.workers"),
    ("data.task_weights={edti: 1.0}", "data.task_weights"),
    ("data.task_weights={edit: -1.0}", "data.task_weights.edit"),
    ("data.corpus.sizes.edit=0", "data.task_weights.edit"),
    ("data.source=files", "data.source"),
    ("data.prefetch=0", "data.prefetch"),
    ("train.loss_weights={video: 2.0}", "train.loss_weights"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.log_with=[tensorbord]", "train.log_with"),
    ("model.tokenizers.image.kind=mulaw", "model.tokenizers.image.kind"),
    ("model.tokenizers.image={kind: image_vq}", "model.tokenizers.image.kind"),
    ("model.tokenizers.image.options={cel: 8}", "model.tokenizers.image.options"),
    ("model.text_vocab_size=100", "model.text_vocab_size"),
    ("model.core.num_heads=3", "core.hidden_size"),
])
def test_bad_config_values_name_the_key(tmp_path, override, key):
    extra = ["data.task_weights={edit: 1.0}", "data.source=corpus"] if override.startswith("data.corpus") else []
    with pytest.raises(InvalidArgumentError, match=key.replace(".", r"\.").replace("[", r"\[")):
        smoke_config(tmp_path, *extra, override)


def test_replace_tokenizers_trains_a_saved_core_on_a_new_codec_of_the_same_layout(tmp_path, monkeypatch):
    first = recipe.main(smoke_config(tmp_path / "a", "optim.steps=2"))
    init = f"model.init_from={first.final_dir}"
    codec = "{kind: mulaw, options: {sample_rate: 16000, frame_size: 800, codebook_size: 16, max_pitch: 500.0}}"
    config = smoke_config(tmp_path / "b", init, f"model.replace_tokenizers.audio={codec}", "optim.steps=2",
                          "model.align_items=0")
    start = recipe.build_model(config, None)
    saved = AnyGen.from_pretrained(first.final_dir)
    assert (start.tokenizers["audio"].max_pitch, saved.tokenizers["audio"].max_pitch) == (500.0, 1000.0)
    assert start.processor.tokenizers["audio"] is start.tokenizers["audio"]
    for key, value in saved.core.state_dict().items():  # the core goes on from the saved weights
        torch.testing.assert_close(start.core.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # aligned: only rows of audio codes move, each to the mean of saved audio rows
    aligned = recipe.build_model(smoke_config(tmp_path / "e", init, f"model.replace_tokenizers.audio={codec}",
                                              "model.align_items=4"), None).core.get_input_embeddings().weight
    table, audio = saved.core.get_input_embeddings().weight, saved.vocab.mask("audio")
    moved = (aligned != table).any(1)
    assert moved.any() and audio[moved].all()
    lo, hi = table[audio].min(0).values, table[audio].max(0).values
    assert ((aligned[moved] >= lo - 1e-6) & (aligned[moved] <= hi + 1e-6)).all()
    second = recipe.main(config)
    assert second.complete and AnyGen.from_pretrained(second.final_dir).tokenizers["audio"].max_pitch == 500.0

    other_layout = codec.replace("codebook_size: 16", "codebook_size: 32")
    with pytest.raises(InvalidArgumentError, match=r"model\.replace_tokenizers\.audio: .*codebook_size"):
        recipe.main(smoke_config(tmp_path / "c", init, f"model.replace_tokenizers.audio={other_layout}"))
    with pytest.raises(InvalidArgumentError, match=r"model\.replace_tokenizers.*needs model\.init_from"):
        smoke_config(tmp_path / "d", f"model.replace_tokenizers.audio={codec}")
    with pytest.raises(InvalidArgumentError, match=r"model\.align_items=-1.*\[0, 100000\]"):
        smoke_config(tmp_path / "d", init, "model.align_items=-1")

    # a resumed run loads its own weights: it does not align again
    aligned_run = (init, f"model.replace_tokenizers.audio={codec}", "model.align_items=4", "train.checkpoint_every=1")
    recipe.main(smoke_config(tmp_path / "f", *aligned_run, "optim.steps=1"))

    def no_second_alignment(*args):
        raise AssertionError("aligned again on resume")

    monkeypatch.setitem(recipe.ALIGN_SOURCES, "audio", no_second_alignment)
    assert recipe.main(smoke_config(tmp_path / "f", *aligned_run, "optim.steps=2")).complete


def test_a_context_shorter_than_the_longest_row_is_refused_before_training(tmp_path):
    with pytest.raises(InvalidArgumentError, match="max_position_embeddings=64"):
        recipe.main(smoke_config(tmp_path, "model.core.max_position_embeddings=64"))
    assert not (tmp_path / "checkpoints").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out_dir: Path, steps: int) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "anygen.training.core_cli", "--config", str(SMOKE),
               "--set", f"train.out_dir={out_dir}", "--set", f"optim.steps={steps}", "--set", "train.threads=1",
               "--set", "train.checkpoint_every=2", "--set", "train.log_every=1"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.multiprocess
def test_two_processes_over_gloo_train_and_resume(tmp_path):
    first = _launch(tmp_path, steps=4)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in committed_checkpoints(tmp_path / "checkpoints")][-1] == "step-00000004"
    second = _launch(tmp_path, steps=6)  # a longer schedule: continues from step 4
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout[second.stdout.index("{"):])  # printed once, by the main process
    assert result["step"] == 6 and result["complete"]
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert all(len(r["tokens_per_process"]) == 2 and min(r["tokens_per_process"]) > 0 for r in logged)
    model = AnyGen.from_pretrained(result["final_dir"])
    assert model.vocab.modality_names == ["text", "image", "audio"]


def test_validation_scores_are_logged_and_leave_training_unchanged(tmp_path):
    steps = ("optim.steps=4", "train.log_every=2")
    plain = recipe.main(smoke_config(tmp_path / "a", *steps))
    evaluated = recipe.main(smoke_config(tmp_path / "b", *steps, "train.eval_every=2", "train.eval_suites=[caption]",
                                         "train.eval_n=1"))
    scores = [r for r in records(tmp_path / "b") if "eval" in r]
    assert [r["step"] for r in scores] == [2, 4]
    assert all(set(r["eval"]) == {"caption"} and 0.0 <= r["eval"]["caption"] <= 1.0 for r in scores)
    assert all(r["cpu_s"] > 0 for r in records(tmp_path / "b") if "loss" in r)
    want, got = (load_file(str(Path(r.final_dir) / "model.safetensors")) for r in (plain, evaluated))
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
