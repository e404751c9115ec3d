"""Adding a modality to a trained model: append-only ids, unchanged old logits, persistence, the ``anygen extend``
recipe in each mode, the signal example's tokenizer, data and judge, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anygen import cli
from anygen.config import load_config
from anygen.data.signals import HELD_OUT_COMBOS, SignalSpec, build_split, parse_signal_text, render_signal
from anygen.gated_lora import AdapterSpec, GatedAdapters
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.evaluation.signals import main as signal_eval
from anygen.evaluation.signals import read_signal, run_signal_suite, signal_rates
from anygen.extension import add_modality
from anygen.generation import KVRunner
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.tokenizers.signal import SignalTokenizer
from anygen.training.extend_recipe import ExtendConfig
from anygen.types import MediaSegment, TextSegment
from anygen.vocab import ModalitySpec, Vocab

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "extend" / "signal.yaml"
SMALL = ["optim.steps=2", "optim.batch_size=2", "optim.warmup_steps=1", "train.threads=0", "train.checkpoint_every=1",
         "train.log_every=1", "lora.rank=2", "modality.options={length: 16, levels: 16}",
         "data.sizes={text_to_signal: 4, signal_to_text: 4}",
         "data.replay={seed: 0, image_size: 32, sizes: {text_to_image: 2, image_to_text: 2, text: 2}}"]


# ---- the vocab and the model ----------------------------------------------------------------------------------
def test_extended_vocab_appends_after_every_existing_id() -> None:
    old = Vocab(300, [ModalitySpec("image", 64), ModalitySpec("audio", 32, 2)])
    new = old.extended(ModalitySpec("signal", 16))
    assert {k: new.specials[k] for k in old.specials} == old.specials
    for name in ("image", "audio"):
        assert [new.span(name, k) for k in range(old.spec(name).num_codebooks)] == \
               [old.span(name, k) for k in range(old.spec(name).num_codebooks)]
    assert new.begin_id("signal") == old.size and new.span("signal").start == old.size + 2
    assert new.size % new.pad_to == 0 and new.modality_names == ["text", "image", "audio", "signal"]
    ids = torch.arange(old.size)
    assert torch.equal(new.modality_of(ids), old.modality_of(ids))
    assert Vocab.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    assert "appended" not in old.to_dict() and Vocab.from_dict(old.to_dict()) == old  # old files load unchanged
    twice = new.extended(ModalitySpec("depth", 8))
    assert twice.begin_id("depth") == new.size and twice.span("signal") == new.span("signal")
    with pytest.raises(InvalidArgumentError, match="already"):
        new.extended(ModalitySpec("image", 8))


def test_add_modality_keeps_old_ids_rows_and_logits(tiny_model: AnyGen) -> None:
    old_size = tiny_model.vocab.size
    ids = torch.randint(0, tiny_model.vocab.used_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tiny_model(ids).logits
    embedding = tiny_model.core.get_input_embeddings().weight.detach().clone()
    model = add_modality(tiny_model, SignalTokenizer(length=16, levels=16))
    with torch.no_grad():
        after = model(ids).logits
    assert after.shape[-1] == model.vocab.size > old_size
    assert torch.equal(after[..., :old_size], before)
    grown = model.core.get_input_embeddings().weight.detach()
    assert torch.equal(grown[:old_size], embedding)
    torch.testing.assert_close(grown[old_size:], embedding.mean(0).expand(model.vocab.size - old_size, -1))
    signal = torch.linspace(-1, 1, 16)
    (back,) = model.processor.decode(model.processor.encode([MediaSegment("signal", signal)]))
    torch.testing.assert_close(back.data, signal, atol=1 / 15, rtol=0)
    with pytest.raises(InvalidArgumentError, match="already"):
        add_modality(model, SignalTokenizer())


def test_old_tasks_sample_exactly_the_same_after_a_modality_is_appended(tiny_model: AnyGen) -> None:
    """Sampling noise is drawn per token id (anygen.generation.sampling.NoiseSource), so appended ids change no old
    sample."""
    def sample(model: AnyGen) -> tuple[list, str, list]:
        pipe = AnyGenPipeline(model, image_size=(32, 32), max_audio_seconds=0.1)
        seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        image = pipe.text_to_image("a red circle", num_images_per_prompt=2, generator=seed(), output_type="pt").images
        (wave,) = pipe.speak("a blue square", generator=seed(), temperature=1.5).audios
        caption = pipe.caption(image[0], do_sample=True, generator=seed()).texts
        return image.tolist(), caption, wave.tolist()

    before = sample(tiny_model)
    after = sample(add_modality(tiny_model, SignalTokenizer(length=16, levels=16)))
    assert after == before


def test_extended_model_round_trips_and_generates(tiny_model: AnyGen, tmp_path: Path) -> None:
    model = add_modality(tiny_model, SignalTokenizer(length=16, levels=16))
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vocab"]["appended"] == [["signal", 16, 1]]
    loaded = AnyGen.from_pretrained(tmp_path / "m")
    assert loaded.vocab == model.vocab and isinstance(loaded.tokenizers["signal"], SignalTokenizer)
    for key, value in model.core.state_dict().items():
        assert torch.equal(loaded.core.state_dict()[key], value), key
    pipe = AnyGenPipeline(loaded)
    out = pipe.generate([MediaSegment("signal", torch.sin(torch.linspace(0, 6.28, 50)))], max_new_tokens=24,
                        output_modalities=["signal"], generator=torch.Generator().manual_seed(0)).segments
    assert all(isinstance(s, (TextSegment, MediaSegment)) for s in out)
    signals = [s for s in out if isinstance(s, MediaSegment)]
    assert all(s.data.shape == (16,) for s in signals)


# ---- the recipe -----------------------------------------------------------------------------------------------
def _extend(base: Path, out: Path, mode: str, *extra: str) -> int:
    args = ["extend", "--model", str(base), "--modality", "signal", "--config", str(CONFIG)]
    for item in (f"mode={mode}", f"train.out_dir={out}", *SMALL, *extra):
        args += ["--set", item]
    return cli.main(args)


@pytest.fixture()
def saved_tiny(tiny_model: AnyGen, tmp_path: Path) -> Path:
    tiny_model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_rows_mode_trains_only_the_new_rows(saved_tiny: Path, tmp_path: Path) -> None:
    assert _extend(saved_tiny, tmp_path / "run", "rows") == 0
    base, extended = AnyGen.from_pretrained(saved_tiny), AnyGen.from_pretrained(tmp_path / "run" / "final")
    n = base.vocab.size
    grown = extended.core.state_dict()
    for key, value in base.core.state_dict().items():
        assert torch.equal(grown[key][:n], value), key  # bit-identical, embedding rows included
    new_rows = extended.core.get_input_embeddings().weight[n:]
    assert not torch.allclose(new_rows, new_rows[0].expand_as(new_rows))  # trained away from the mean init
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    # The same command resumes from the committed checkpoint (nothing left to do).
    assert _extend(saved_tiny, tmp_path / "run", "rows") == 0
    # The signal judge scores the saved model through the generic pipeline.
    report = tmp_path / "signal.json"
    assert signal_eval(["--model", str(tmp_path / "run" / "final"), "--n", "1", "--json", str(report)]) == 0
    results = json.loads(report.read_text())["results"]
    assert [r["suite"] for r in results] == ["text_to_signal", "signal_to_text"] and results[0]["n"] == 4


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_lora_and_full_modes_save_a_plain_model(saved_tiny: Path, tmp_path: Path, mode: str) -> None:
    assert _extend(saved_tiny, tmp_path / "run", mode) == 0
    base, extended = AnyGen.from_pretrained(saved_tiny), AnyGen.from_pretrained(tmp_path / "run" / "final")
    assert set(extended.core.state_dict()) == set(base.core.state_dict())  # adapters merged away
    assert extended.vocab.modality_names == ["text", "image", "audio", "signal"]
    changed = [k for k, v in base.core.state_dict().items() if "layers" in k and
               not torch.equal(extended.core.state_dict()[k], v)]
    assert changed


def test_gated_mode_keeps_every_old_task_exact_and_adapts_the_new_modality(saved_tiny: Path, tmp_path: Path) -> None:
    assert _extend(saved_tiny, tmp_path / "run", "gated", "optim.lr=0.05") == 0
    base, extended = AnyGen.from_pretrained(saved_tiny), AnyGen.from_pretrained(tmp_path / "run" / "final")
    n = base.vocab.size
    for key, value in base.core.state_dict().items():
        assert torch.equal(extended.core.state_dict()[key][:n], value), key  # the core itself is untouched
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert config["adapters"][0]["first_id"] == n and config["adapters"][0]["end_id"] == extended.vocab.size
    assert (tmp_path / "run" / "final" / "adapters.safetensors").is_file()
    # Old ids only: exactly the old logits. A new-modality token in the row: the adapters change what follows.
    old_ids = torch.randint(0, base.vocab.used_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(extended(old_ids).logits[..., :n], base(old_ids).logits)
        mixed = torch.cat([old_ids[:, :4], torch.full((2, 1), extended.vocab.begin_id("signal")), old_ids[:, 4:]], 1)
        detached = AnyGen.from_pretrained(tmp_path / "run" / "final")
        for adapter in detached.adapters:
            adapter.detach()
        with_adapters, without = extended(mixed).logits, detached(mixed).logits
    assert torch.equal(with_adapters[:, :4], without[:, :4])  # before the first gated token: unchanged
    assert not torch.allclose(with_adapters[:, 4:], without[:, 4:])
    # Cached decoding (prefill, then one token per call) carries the gate across calls: same logits as one
    # forward over the whole row.
    runner = KVRunner(extended.core, [mixed[0, :6].tolist(), old_ids[0, :6].tolist()], extended.vocab.pad_id, 4)
    with torch.no_grad():
        steps = [runner.prefill()] + [runner.decode(torch.stack([mixed[0, t], old_ids[0, t]])) for t in range(6, 9)]
        full = [extended(mixed[:1, :9]).logits[0, 5:9], extended(old_ids[:1, :9]).logits[0, 5:9]]
    torch.testing.assert_close(torch.stack([s[0] for s in steps]), full[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack([s[1] for s in steps]), full[1], atol=1e-4, rtol=1e-4)
    # Extending the extended model again keeps the first adapters (and their gate) in place.
    again = add_modality(extended, SignalTokenizer(length=8, levels=8), "trace")
    assert len(again.adapters) == 1 and again.adapters[0].spec.end_id == extended.vocab.size


def test_gated_adapters_refuse_bad_settings(saved_tiny: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _extend(saved_tiny, tmp_path / "run", "gated", "lora.dropout=0.1") == 2
    assert "lora.dropout" in capsys.readouterr().err
    assert _extend(saved_tiny, tmp_path / "run", "gated", "lora.targets=[no_such_proj]") == 2
    assert "no_such_proj" in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError, match="end_id"):
        AdapterSpec(first_id=10, end_id=10)
    model = AnyGen.from_pretrained(saved_tiny)
    adapters = GatedAdapters(model.core, AdapterSpec(first_id=0, end_id=model.vocab.size, rank=2)).attach(model.core)
    with pytest.raises(InvalidArgumentError, match="input_ids"):
        model.core(inputs_embeds=torch.zeros(1, 2, model.core.config.hidden_size))
    adapters.detach()


def test_a_saved_model_with_broken_adapter_files_is_refused(saved_tiny: Path, tmp_path: Path) -> None:
    assert _extend(saved_tiny, tmp_path / "run", "gated") == 0
    final = tmp_path / "run" / "final"
    (final / "adapters.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="adapters.safetensors"):
        AnyGen.from_pretrained(final)


@pytest.mark.parametrize(("override", "message"), [
    ("mode=adapters", "mode"), ("lora.rank=0", "lora.rank"), ("data.sizes={text: 3}", "old task"),
    ("modality.tokenizer=NoSuchTokenizer", "modality.tokenizer"), ("data.replay_fraction=1.0", "replay_fraction"),
    ("modality.options={length: 1}", "length=1"),
])
def test_bad_settings_are_named_before_any_work(saved_tiny: Path, tmp_path: Path, override: str, message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _extend(saved_tiny, tmp_path / "run", "rows", override) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


def test_missing_model_and_wrong_modality_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _extend(tmp_path / "nothing", tmp_path / "run", "rows") == 2
    assert "--model" in capsys.readouterr().err
    code = cli.main(["extend", "--model", str(tmp_path), "--modality", "sensor", "--config", str(CONFIG)])
    assert code == 2 and "--modality='sensor'" in capsys.readouterr().err


def test_the_shipped_config_loads() -> None:
    config = load_config(ExtendConfig, CONFIG)
    assert config.modality.build().codebook_size == 64 and abs(sum(config.data.weights().values()) - 1) < 1e-9


# ---- the signal example -----------------------------------------------------------------------------------------
def test_signal_tokenizer_round_trips_and_refuses_bad_input(tmp_path: Path) -> None:
    tok = SignalTokenizer(length=32, levels=16)
    on_grid = torch.randint(0, 16, (3, 32)).float() / 15 * 2 - 1
    assert torch.equal(tok.decode(tok.encode(list(on_grid))), on_grid)
    wave = render_signal(SignalSpec("sine", 2, "high"), 0.1)  # 256 samples -> 32 points
    back = tok.decode(tok.encode([wave]))[0]
    assert back.shape == (32,) and float((back - wave.reshape(32, 8).mean(-1)).abs().max()) <= 1 / 15 + 1e-6
    assert tok.tokens_for(256) == 32 and tok.encode([np.zeros(5, dtype=np.float32)]).shape == (1, 32)
    tok.save_pretrained(tmp_path / "t")
    loaded = SignalTokenizer.from_pretrained(tmp_path / "t")
    assert (loaded.length, loaded.levels) == (32, 16)
    with pytest.raises(MediaError, match=r"\[-1, 1\]"):
        tok.encode([torch.full((10,), 1.5)])
    with pytest.raises(MediaError, match="NaN"):
        tok.encode([torch.tensor([0.0, float("nan")])])
    with pytest.raises(MediaError, match="one channel"):
        tok.encode([torch.zeros(2, 10)])
    with pytest.raises(InvalidArgumentError, match=r"length=1 must be an integer in \[2, 4096\]"):
        SignalTokenizer(length=1)
    with pytest.raises(InvalidArgumentError, match=r"levels=.* \[2, 4096\]"):
        SignalTokenizer(levels=1)
    with pytest.raises(InvalidArgumentError, match=r"codes must lie in \[0, 16\)"):
        tok.decode(torch.full((1, 32), 16))


def test_signal_data_is_deterministic_and_holds_out_combinations() -> None:
    sizes = {"text_to_signal": 6, "signal_to_text": 6}
    first, again = build_split(sizes, "train", seed=3), build_split(sizes, "train", seed=3)
    assert [i["meta"] for i in first] == [i["meta"] for i in again]
    assert all(torch.equal(a["target"][0].data, b["target"][0].data) for a, b in zip(first[:6], again[:6]))
    combo = lambda item: (item["meta"]["spec"]["shape"], item["meta"]["spec"]["cycles"])  # noqa: E731
    assert not any(combo(i) in HELD_OUT_COMBOS for i in first)
    assert all(combo(i) in HELD_OUT_COMBOS for i in build_split(sizes, "test", seed=3))
    assert all(i["meta"]["phase"] == 0.0 for i in first if i["task"] == "text_to_signal")
    spec = SignalSpec("square", 3, "high", noisy=True)
    assert spec.text == "a noisy square wave with 3 cycles, high amplitude" and parse_signal_text(spec.text) == spec
    assert parse_signal_text("a sine wave with one cycle, low amplitude") == SignalSpec("sine", 1, "low")
    with pytest.raises(InvalidArgumentError, match=r"cycles=7 must be an integer in \[1, 6\]"):
        SignalSpec("sine", 7, "low")
    with pytest.raises(InvalidArgumentError, match="unknown signal task"):
        build_split({"signal_to_image": 1}, "train")


def test_signal_judge_passes_correct_pairs_and_fails_mismatched_ones() -> None:
    for split in ("test", "validation"):
        rates = signal_rates(n_per_shape=8, seed=0, split=split)
        assert rates.correct >= 0.95 and rates.mismatched <= 0.05, (split, rates)
    text = signal_rates(n_per_shape=8, text=True)
    assert (text.correct, text.mismatched) == (1.0, 0.0)
    assert [(r.suite, r.overall) for r in run_signal_suite(2)] == [("text_to_signal", 1.0), ("signal_to_text", 1.0)]
    assert read_signal(render_signal(SignalSpec("triangle", 5, "low"), 0.7)).spec == SignalSpec("triangle", 5, "low")
    with pytest.raises(MediaError, match="finite"):
        read_signal(torch.tensor([0.0, float("inf"), 0.0]))
