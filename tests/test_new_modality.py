"""A modality the library has never heard of works through the generic path: one tokenizer + one registry entry."""

from __future__ import annotations

from pathlib import Path

import torch

from anygen.core import CoreConfig
from anygen.generation import generate
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.tokenizers import TOKENIZER_CLASSES, register_tokenizer
from anygen.types import MediaSegment, TextSegment


class SensorTokenizer:
    """1-D signals in [-1, 1] -> 3 codebooks per frame (coarse, medium and fine levels of the frame mean)."""

    modality = "sensor"
    codebook_size = 8
    num_codebooks = 3
    variable_length = True
    default_shape = 40  # samples: up to 10 frames per span

    def tokens_for(self, item_shape: int) -> int:
        return item_shape // 4 * self.num_codebooks

    def encode(self, batch):
        rows = []
        for signal in batch:
            level = ((torch.as_tensor(signal).reshape(-1, 4).mean(-1) + 1) / 2 * 511).round().long().clamp(0, 511)
            rows.append(torch.stack([level // 64, level // 8 % 8, level % 8], -1).reshape(-1))
        return torch.stack(rows)

    def decode(self, codes):
        frames = codes.reshape(codes.shape[0], -1, 3)
        level = frames[..., 0] * 64 + frames[..., 1] * 8 + frames[..., 2]
        return (level.float() / 511 * 2 - 1).repeat_interleave(4, -1)

    def save_pretrained(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tokenizer_config.json").write_text("{}")

    @classmethod
    def from_pretrained(cls, directory):
        return cls()


def test_a_registered_modality_flows_through_processor_grammar_generation_and_disk(text_tokenizer, tmp_path,
                                                                                  monkeypatch) -> None:
    monkeypatch.setattr("anygen.tokenizers.registry.TOKENIZER_CLASSES", dict(TOKENIZER_CLASSES))
    register_tokenizer(SensorTokenizer)
    torch.manual_seed(0)
    model = AnyGen.create(text_tokenizer, {"sensor": SensorTokenizer()},
                          CoreConfig(64, 2, 4, 2, 128, 256)).eval()
    vocab = model.vocab
    assert vocab.begin_id("sensor") in vocab.specials.values() and len(vocab.span("sensor", 2)) == 8

    signal = torch.linspace(-1, 1, 16)
    ids = model.processor.encode([TextSegment("a ramp"), MediaSegment("sensor", signal)])
    (_, back) = model.processor.decode(ids)
    assert isinstance(back, MediaSegment) and torch.allclose(back.data, signal.reshape(-1, 4).mean(-1)
                                                             .repeat_interleave(4), atol=2 / 511)

    prompt = [vocab.bos_id, *model.processor.encode([TextSegment("a ramp")]), vocab.begin_id("sensor")]
    rules = model.span_rules({"sensor": 40})
    for seed in range(5):
        out = generate(model.core, vocab, rules, [prompt], max_new_tokens=40,
                       generator=torch.Generator().manual_seed(seed)).sequences[0]
        end = out.index(vocab.end_id("sensor"))
        assert end % 3 == 0 and 3 <= end <= 30
        assert [t in vocab.span("sensor", i % 3) for i, t in enumerate(out[:end])] == [True] * end

    model.save_pretrained(tmp_path / "m")
    pipe = AnyGenPipeline.from_pretrained(tmp_path / "m")
    out = pipe.generate([TextSegment("a ramp")], max_new_tokens=30, generator=torch.Generator().manual_seed(0)).segments
    assert all(isinstance(s, (TextSegment, MediaSegment)) for s in out)
