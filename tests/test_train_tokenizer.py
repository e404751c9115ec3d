"""The tokenizer recipe: configs load, a short run trains and saves, and a crashed run resumes to the same weights."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from anygen.config import load_config
from anygen.errors import InvalidArgumentError
from anygen.tokenizers import AudioCodec, ImageVQ
from anygen.training import tokenizer as recipe
from anygen.training.checkpoint import committed_checkpoints
from anygen.training.tokenizer import TokenizerTrainConfig
from anygen.training.tokenizer_cli import add_arguments
from anygen.training.tokenizer_cli import main as cli_main
from anygen.training.tokenizer_tasks import TASKS, ImageTask

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "tokenizer").glob("*.yaml"))
TINY_IMAGE = ["image.channels=[8, 16]", "image.res_blocks=0", "image.latent_dim=4", "image.image_size=[16, 16]",
              "data.image_size=[16, 16]", "image.quantizer.codebook_size=16", "image.quantizer.codebook_dim=4",
              "data.sources={scenes: 1.0}", "data.eval_sources={scenes: 1.0}", "data.eval_batches=1",
              "data.shapes_eval_per_category=0", "train.batch_size=4", "train.steps=6", "train.warmup_steps=2",
              "train.eval_every=100", "train.checkpoint_every=3", "train.threads=0"]


def tiny_config(tmp_path: Path, extra: list[str] = ()) -> TokenizerTrainConfig:
    overrides = TINY_IMAGE + [f"output_dir={tmp_path / 'run'}", f"final_dir={tmp_path / 'final'}", *extra]
    return load_config(TokenizerTrainConfig, CONFIGS[0].parent / "image-tiny.yaml", overrides)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(TokenizerTrainConfig, path)
    assert config.modality in ("image", "audio")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(InvalidArgumentError, match="data.sources"):
        tiny_config(tmp_path, ["data.sources={speech: 1.0}"])
    with pytest.raises(InvalidArgumentError, match="train.steps"):
        tiny_config(tmp_path, ["train.steps=0"])
    with pytest.raises(InvalidArgumentError, match="unknown config key"):
        tiny_config(tmp_path, ["train.stepz=3"])


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path, monkeypatch):
    reference = recipe.main(tiny_config(tmp_path / "a"))
    assert reference.step == 6 and ImageVQ.from_pretrained(reference.final_dir).tokens_for((16, 16)) == 64

    class CrashingTask(ImageTask):
        def batch(self, step, split="train", shard=0):
            if step == 4:
                raise Crash("killed at step 4")
            return super().batch(step, split, shard)

    monkeypatch.setitem(TASKS, "image", CrashingTask)
    with pytest.raises(Crash):
        recipe.main(tiny_config(tmp_path / "b"))
    assert [p.name for p in committed_checkpoints(tmp_path / "b" / "run" / "checkpoints")] == ["step-00000003"]
    monkeypatch.setitem(TASKS, "image", ImageTask)
    resumed = recipe.main(tiny_config(tmp_path / "b"))
    assert resumed.step == 6
    expected = ImageVQ.from_pretrained(reference.final_dir).state_dict()
    for key, value in ImageVQ.from_pretrained(resumed.final_dir).state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_audio_recipe_and_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    overrides = ["audio.channels=16", "audio.res_blocks=1", "audio.latent_dim=4", "audio.griffin_lim_iters=2",
                 "audio.quantizer.codebook_size=16", "audio.quantizer.codebook_dim=4",
                 "data.sources={melodies: 1.0}", "data.eval_sources={melodies: 1.0}", "data.clip_seconds=0.25",
                 "data.eval_batches=1", "train.batch_size=4", "train.steps=2", "train.eval_every=2",
                 "train.threads=0", f"output_dir={tmp_path / 'run'}", f"final_dir={tmp_path / 'final'}"]
    args = parser.parse_args(["--config", str(CONFIGS[0].parent / "audio-tiny.yaml"),
                              *[item for o in overrides for item in ("--set", o)]])
    assert cli_main(args) == 0
    assert '"spec_l1_melodies"' in capsys.readouterr().out
    codec = AudioCodec.from_pretrained(tmp_path / "final")
    assert codec.encode([torch.zeros(4000)]).shape == (1, 13)
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_folder_sources(tmp_path):
    import soundfile as sf
    from PIL import Image

    from anygen.training.sources import audio_batch, image_batch

    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.jpg")
    sf.write(tmp_path / "tone.wav", np.sin(np.arange(8000) * 0.1).astype(np.float32), 8000)
    images = image_batch({"folder": 1.0}, 4, (16, 16), seed=0, step=0, folder=str(tmp_path))
    assert images.shape == (4, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1
    waves = audio_batch({"folder": 1.0}, 2, 4000, seed=0, step=0, folder=str(tmp_path))
    assert waves.shape == (2, 4000)
    with pytest.raises(InvalidArgumentError, match="data.folder"):
        image_batch({"folder": 1.0}, 1, (16, 16), seed=0, step=0, folder=str(tmp_path / "missing"))


def test_fine_tuning_the_decoder_alone_keeps_every_code(tmp_path):
    first = ImageVQ.from_pretrained(recipe.main(tiny_config(tmp_path / "a")).final_dir)
    tuned_dir = recipe.main(tiny_config(tmp_path / "b", [f"init_from={tmp_path / 'a' / 'final'}",
                                                         "freeze=[encoder, quantizer]", "train.lr=0.01"])).final_dir
    tuned = ImageVQ.from_pretrained(tuned_dir)
    before, after = first.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quantizer."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first.encode(images), tuned.encode(images))


def test_freeze_needs_a_trained_codec_and_known_parts(tmp_path):
    with pytest.raises(InvalidArgumentError, match="init_from"):
        tiny_config(tmp_path, ["freeze=[encoder]"])
    with pytest.raises(InvalidArgumentError, match="freeze"):
        tiny_config(tmp_path, ["freeze=[encoder, quantizer, decoder]", f"init_from={tmp_path}"])
    with pytest.raises(InvalidArgumentError, match="freeze"):
        tiny_config(tmp_path, ["freeze=[encodr]", f"init_from={tmp_path}"])
    with pytest.raises(InvalidArgumentError, match="init_from"):
        tiny_config(tmp_path, [f"init_from={tmp_path / 'missing'}"])


def test_warm_start_copies_the_tensors_that_match_and_starts_the_rest_fresh(tmp_path):
    first = ImageVQ.from_pretrained(recipe.main(tiny_config(tmp_path / "a")).final_dir)
    config = tiny_config(tmp_path / "b", [f"warm_start={tmp_path / 'a' / 'final'}", "image.quantizer.codebook_dim=2",
                                          "train.steps=1"])
    model = TASKS[config.task](config).build_model()
    assert model.quantizer.config.codebook_dim == 2  # the config's architecture, not the saved one's
    before, after = first.state_dict(), model.state_dict()
    kept = [k for k in after if k in before and before[k].shape == after[k].shape]
    assert any(k.startswith("encoder.") for k in kept) and any(k.startswith("decoder.") for k in kept)
    assert all(torch.equal(before[k], after[k]) for k in kept)
    assert any(k.startswith("quantizer.") and k not in kept for k in after)  # the new codebook starts fresh


def test_warm_start_needs_a_saved_codec_and_excludes_init_from(tmp_path):
    with pytest.raises(InvalidArgumentError, match="warm_start"):
        tiny_config(tmp_path, [f"warm_start={tmp_path / 'missing'}"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidArgumentError, match="warm_start and init_from"):
        tiny_config(tmp_path, [f"warm_start={tmp_path}", f"init_from={tmp_path}"])
