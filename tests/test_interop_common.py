"""What every converted public checkpoint relies on: laid-out spans in the grammar, reserved text ids, the core
allow-list, and refusals of converted models that do not fit (each family's parity lives in its own file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.generation.grammar import Grammar, SpanLayout, span_rules
from anygen.generation.sampling import NoiseSource, sample_tokens
from anygen.model import AnyGen
from anygen.vocab import ModalitySpec, Vocab

CONTENT, PREFIX, SEP, SUFFIX = 8, (9, 10), 8, (11,)  # local codes: 0-7 content, 8 end of row, 9-11 fixed tokens


class LaidOutTokenizer:
    """An image tokenizer whose spans read ``9 10 (c c c 8) (c c c 8) 11``: 2 rows of 3 content codes."""

    modality, codebook_size, num_codebooks, variable_length = "image", 12, 1, False

    def tokens_for(self, shape: tuple[int, int]) -> int:
        return len(PREFIX) + shape[0] * (shape[1] + 1) + len(SUFFIX)

    def span_layout(self, shape: tuple[int, int]) -> SpanLayout:
        return SpanLayout(CONTENT, PREFIX, shape[1], SEP, SUFFIX)


def sample_rows(grammar: Grammar, vocab: Vocab, prompts: list[list[int]], steps: int, seed: int) -> list[list[int]]:
    """Random logits (specials boosted so spans open often) through the grammar, as the decoding loop does."""
    g = torch.Generator().manual_seed(seed)
    state, b, out = grammar.initial_state(prompts, steps), len(prompts), []
    for step in range(steps):
        allowed = grammar.allowed(state, steps - step)
        logits = torch.randn(b, vocab.size, generator=g)
        logits[:, list(vocab.specials.values())] += 3.0
        tokens = sample_tokens(logits, allowed, torch.ones(b), torch.zeros(b, dtype=torch.long), torch.ones(b),
                               torch.zeros(b, dtype=torch.bool), NoiseSource(b, g)(step, vocab.size), False)
        state = grammar.advance(state, tokens, steps - step)
        out.append(tokens)
    return torch.stack(out, 1).tolist()


def test_a_laid_out_span_holds_its_fixed_tokens_and_content_codes_elsewhere() -> None:
    vocab = Vocab(20, [ModalitySpec("image", 12)])
    rules = span_rules(vocab, {"image": LaidOutTokenizer()}, {"image": (2, 3)})
    start = vocab.span("image").start
    expected = [9, 10, -1, -1, -1, 8, -1, -1, -1, 8, 11]
    assert rules[0].forced == tuple(c + start if c >= 0 else -1 for c in expected)
    assert (rules[0].codebook_size, rules[0].max_len) == (CONTENT, 11)
    rows = sample_rows(Grammar(vocab, rules), vocab, [[vocab.bos_id]] * 6, 40, seed=0)
    spans = 0
    for row in rows:
        for i, tok in enumerate(row):
            if tok != vocab.begin_id("image"):
                continue
            body = row[i + 1: i + 12]
            if len(body) < 11:
                continue
            spans += 1
            assert all(t - start == e for t, e in zip(body, expected) if e >= 0), body
            assert all(0 <= t - start < CONTENT for t, e in zip(body, expected) if e < 0), body
            assert i + 12 < len(row) and row[i + 12] == vocab.end_id("image")
    assert spans >= 3, "the mock logits should open several image spans"


def test_a_prompt_ending_inside_a_laid_out_span_continues_its_layout() -> None:
    vocab = Vocab(20, [ModalitySpec("image", 12)])
    grammar = Grammar(vocab, span_rules(vocab, {"image": LaidOutTokenizer()}, {"image": (2, 3)}))
    start = vocab.span("image").start
    prompt = [vocab.bos_id, vocab.begin_id("image"), start + 9, start + 10, start + 1]  # prefix and one code
    row = sample_rows(grammar, vocab, [prompt], 9, seed=1)[0]
    local = [t - start for t in row[:8]]
    assert all(0 <= c < CONTENT for c in local[:2]) and local[2] == SEP
    assert all(0 <= c < CONTENT for c in local[3:6]) and local[6:8] == [SEP, 11]
    assert row[8] == vocab.end_id("image")


@pytest.mark.parametrize("layout, match", [
    (SpanLayout(CONTENT, PREFIX, 2, SEP, SUFFIX), "does not fit this layout"),  # 2 rows of 3 != rows of 2
    (SpanLayout(CONTENT, PREFIX, 3, None, SUFFIX), "row_separator=None"),
    (SpanLayout(CONTENT, (3, 10), 3, SEP, SUFFIX), "layout codes must lie in"),  # 3 is a content code
    (SpanLayout(13, PREFIX, 3, SEP, SUFFIX), "content_codes=13"),
])
def test_a_layout_that_does_not_fit_its_span_is_refused(layout: SpanLayout, match: str) -> None:
    tok = LaidOutTokenizer()
    tok.span_layout = lambda shape: layout  # type: ignore[method-assign]
    with pytest.raises(InvalidArgumentError, match=match):
        span_rules(Vocab(20, [ModalitySpec("image", 12)]), {"image": tok}, {"image": (2, 3)})


def test_reserved_text_ids_are_never_sampled_as_text_and_survive_save_and_extension() -> None:
    vocab = Vocab(30, [ModalitySpec("image", 12)], reserved=[(2, 5), (20, 30)])
    assert vocab.mask("text").nonzero().flatten().tolist() == [0, 1, *range(5, 20)]
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    assert vocab.extended(ModalitySpec("audio", 4)).reserved == vocab.reserved
    rows = sample_rows(Grammar(vocab, span_rules(vocab, {"image": LaidOutTokenizer()}, {"image": (2, 3)})), vocab,
                       [[vocab.bos_id]] * 4, 30, seed=2)
    assert not any(2 <= t < 5 or 20 <= t < 30 for row in rows for t in row)
    with pytest.raises(InvalidArgumentError, match="reserved"):
        Vocab(30, [ModalitySpec("image", 12)], reserved=[(25, 31)])


# ---- the core allow-list ------------------------------------------------------------------------------------------
def _edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))


def test_the_core_class_is_recorded_and_files_without_it_still_load(tiny_model: AnyGen, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["core_class"] == "LlamaForCausalLM"
    _edit_config(tmp_path / "m", core_class=None)  # written before core_class existed
    assert type(AnyGen.from_pretrained(tmp_path / "m").core).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("core_class, match", [
    ("os:system", "core_class='os:system' is not an allowed core for model_type='llama'"),
    ("Qwen2ForCausalLM", "not an allowed core for model_type='llama': anygen builds LlamaForCausalLM"),
    ("Emu3ForCausalLM", "core_class='Emu3ForCausalLM' needs a core config of model_type='emu3_text_model'"),
])
def test_a_core_class_off_the_allow_list_is_refused(tiny_model: AnyGen, tmp_path: Path, core_class: str,
                                                    match: str) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", core_class=core_class)
    with pytest.raises(CheckpointError, match=match):
        AnyGen.from_pretrained(tmp_path / "m")


# ---- converting, loading, the demo, extension ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from interop_sources import emu3_source

    return emu3_source(tmp_path_factory.mktemp("emu3"))


@pytest.fixture(scope="module")
def janus_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted Janus model, saved (through the convert command)."""
    from interop_sources import janus_source

    from anygen import cli

    source = janus_source(tmp_path_factory.mktemp("janus"))
    target = tmp_path_factory.mktemp("converted") / "janus"
    assert cli.main(["convert", "--from", "janus", str(source), str(target)]) == 0
    return target


def test_convert_writes_a_model_that_anygen_load_runs(emu3_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import anygen
    from anygen import cli

    assert cli.main(["convert", "--from", "emu3", str(emu3_dir), str(tmp_path / "out"), "--image-size", "16",
                     "16"]) == 0
    assert "Emu3ForCausalLM core" in capsys.readouterr().out
    pipe = anygen.load(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_size == (16, 16) and len(pipe.text_to_image("a red circle").images) == 1


@pytest.mark.parametrize("args, message", [
    (["--from", "janus", "{emu3}", "{out}"], "model_type='emu3', but this converter reads 'janus'"),
    (["--from", "emu3", "{emu3}", "{out}", "--vqgan", "x.safetensors"], "--from emu3 does not take ['vqgan_weights']"),
    (["--from", "emu3", "{emu3}", "{out}", "--image-size", "10", "10"], "must be multiples of 4"),
    (["--from", "emu3", "{missing}", "{out}"], "is not a directory"),
    (["--from", "emu3", "{emu3}", "{full}"], "non-empty folder that is not an anygen model"),
])
def test_convert_refuses_what_it_cannot_convert(emu3_dir: Path, tmp_path: Path, args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from anygen import cli

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    paths = {"emu3": emu3_dir, "out": tmp_path / "out", "missing": tmp_path / "missing", "full": tmp_path / "full"}
    assert cli.main(["convert", *[a.format(**paths) for a in args]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_a_converted_model_with_a_mismatched_vocab_is_refused(janus_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(janus_model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["vocab"]["modalities"][0][1] = 64  # the image span no longer matches the Janus VQ-VAE's 32 codes
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"image tokenizer has codebook_size x num_codebooks = \(32, 1\)"):
        AnyGen.from_pretrained(tmp_path / "m")
    config["vocab"]["modalities"][0][1] = 32
    config["core"]["janus_generation"]["num_embeddings"] = 64  # the core's image head, against its weights
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        AnyGen.from_pretrained(tmp_path / "m")


def test_the_demo_builds_and_draws_on_a_converted_model(janus_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    import anygen
    from anygen.apps.demo import build_demo

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    pipe = anygen.load(janus_model_dir)
    pipe.set_progress_bar_config(disable=True)
    demo = build_demo(pipe)
    text_to_image = next(f.fn for f in demo.fns.values() if f.api_name == "text_to_image")
    images = text_to_image("a red circle", "", 2, 2.0, 1.0, 0, 0, "vq")
    assert len(images) == 2 and images[0].size[0] >= 16


def test_extend_adds_audio_to_a_converted_model_and_old_tasks_keep_their_outputs(janus_model_dir: Path,
                                                                                tmp_path: Path) -> None:
    import anygen
    from anygen.data.corpus import DataConfig, build_task
    from anygen.training.core_recipe import OptimSection, TrainSection
    from anygen.training.extend_recipe import (CORPORA, ExtendConfig, ExtendDataSection, LoraSection,
                                               ModalitySection, main, register_corpus)

    def melodies(sizes: dict[str, int], split: str, seed: int) -> list[dict]:
        config = DataConfig(seed=seed, sizes={"text_to_melody": sizes.get("text_to_audio", 0)}, eval_fraction=0.0)
        return [{**item, "task": "text_to_audio"} for item in build_task(config, split, "text_to_melody")]

    register_corpus("audio", melodies)
    try:
        result = main(ExtendConfig(
            model=str(janus_model_dir), mode="gated", lora=LoraSection(rank=2, alpha=4.0),
            modality=ModalitySection("audio", "MuLawAudioTokenizer", {"sample_rate": 16000}),
            data=ExtendDataSection(sizes={"text_to_audio": 4}, replay_fraction=0.0),
            optim=OptimSection(steps=2, batch_size=2, warmup_steps=1, lr=1e-3, min_lr=1e-4),
            train=TrainSection(out_dir=str(tmp_path / "run"), checkpoint_every=2, log_every=1)))
    finally:
        CORPORA.pop("audio")
    before, after = anygen.load(janus_model_dir), anygen.load(result.final_dir)
    assert type(after.model.core).__name__ == "JanusCore" and after.model.vocab.modality_names[-1] == "audio"
    images = [p.text_to_image("a red circle", output_type="pt", generator=torch.Generator().manual_seed(0)).images
              for p in (before, after)]
    assert torch.equal(*images)  # gated adapters: an old task computes exactly what it computed before
    speech = after.speak("a red circle", max_seconds=0.2, generator=torch.Generator().manual_seed(0))
    assert speech.sample_rate == 16000 and speech.audios[0].numel() > 0


def test_memory_estimate_counts_the_converted_core(janus_model_dir: Path) -> None:
    from anygen.interop.memory import estimate_model, markdown_table

    model = AnyGen.from_pretrained(janus_model_dir)
    est = estimate_model(janus_model_dir, torch.float16)
    weights = {id(p): p.numel() for p in model.core.parameters()}
    assert est.parameters == sum(weights.values()) and est.weight_bytes == 2 * est.parameters
    config = model.core.config  # 2 layers x K and V x kv heads x head size x 2 bytes
    assert est.kv_bytes_per_token == 2 * 2 * config.num_key_value_heads * (config.hidden_size // 4) * 2
    assert "| janus |" in markdown_table([("janus", est)])
