from __future__ import annotations

import pytest
import torch

from anygen.errors import InvalidArgumentError
from anygen.model import AnyGen
from anygen.processor import IGNORE, drop_condition, span_codes
from anygen.tokenizers import ImageVQ
from anygen.tokenizers.image import ImageVQConfig
from anygen.tokenizers.quantizer import QuantizerConfig
from anygen.types import AudioSegment, CodesSegment, ImageSegment, TextSegment


def _palette_image(tok, seed: int) -> torch.Tensor:
    """An image the grid tokenizer reproduces exactly: each 8x8 cell is one palette colour."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, tok.codebook_size, (1, 16), generator=g)
    return tok.decode(codes)[0]


def test_round_trip_of_interleaved_segments(tiny_model: AnyGen) -> None:
    proc = tiny_model.processor
    image = _palette_image(tiny_model.tokenizers["image"], 0)
    segments = [TextSegment("a red circle"), ImageSegment(image), TextSegment(" two green triangles")]
    ids = proc.encode(segments)
    back = proc.decode(ids)
    assert [type(s) for s in back] == [TextSegment, ImageSegment, TextSegment]
    assert back[0].text == "a red circle" and back[2].text == " two green triangles"
    assert torch.allclose(back[1].image, image)


def test_decoded_audio_louder_than_full_scale_is_scaled_down_not_clipped(tiny_model: AnyGen,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that overshoots (as Griffin-Lim does for a loud spectrogram) still yields float audio in [-1, 1]
    with the same shape, which the pipelines take back as input; audio within full scale is left as it is."""
    tokenizer = tiny_model.tokenizers["audio"]
    codes = torch.randint(0, 32, (20,), generator=torch.Generator().manual_seed(0))
    quiet = tiny_model.processor.media_segment("audio", codes).waveform
    assert torch.equal(quiet, tokenizer.decode(codes[None])[0]) and 0 < quiet.abs().max() <= 1
    decode = type(tokenizer).decode
    monkeypatch.setattr(type(tokenizer), "decode", lambda self, c: decode(self, c) * 5 / quiet.abs().max())
    loud = tiny_model.processor.media_segment("audio", codes).waveform
    assert loud.abs().max() == pytest.approx(1.0) and torch.allclose(loud, quiet / quiet.abs().max())


def test_audio_codes_round_trip_through_ids(tiny_model: AnyGen) -> None:
    codes = torch.randint(0, 32, (20,))
    ids = tiny_model.processor.encode([CodesSegment("audio", codes)])
    assert ids[0] == tiny_model.vocab.begin_id("audio") and ids[-1] == tiny_model.vocab.end_id("audio")
    (seg,) = tiny_model.processor.decode(ids, decode_media=False)
    assert seg.modality == "audio" and torch.equal(seg.codes, codes)
    (audio,) = tiny_model.processor.decode(ids)
    assert isinstance(audio, AudioSegment) and audio.waveform.shape == (10 * 400,) and audio.sample_rate == 8000


def test_labels_cover_the_target_only(tiny_model: AnyGen) -> None:
    image = _palette_image(tiny_model.tokenizers["image"], 1)
    batch = tiny_model.processor([[TextSegment("a red circle")], [TextSegment("say hello")]],
                                 [[ImageSegment(image)], [TextSegment("hello")]])
    vocab = tiny_model.vocab
    for row in range(2):
        ids, labels, mask = batch.input_ids[row], batch.labels[row], batch.attention_mask[row]
        prompt_len = 1 + len(tiny_model.processor.encode([TextSegment(["a red circle", "say hello"][row])]))
        assert (labels[:prompt_len] == IGNORE).all()
        real = mask.bool()
        assert torch.equal(labels[prompt_len:][real[prompt_len:]], ids[prompt_len:][real[prompt_len:]])
        assert (labels[~real] == IGNORE).all() and ids[real][-1] == vocab.eos_id
    assert (batch.modality_ids[0] == 1).sum() == 16  # the 16 image codes


def test_left_padding_for_generation_and_open_span(tiny_model: AnyGen) -> None:
    batch = tiny_model.processor([[TextSegment("a")], [TextSegment("a blue square on the left")]],
                                 padding_side="left", begin="image")
    assert batch.labels is None
    assert (batch.input_ids[:, -1] == tiny_model.vocab.begin_id("image")).all()
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[1].all()


def test_special_token_strings_in_user_text_stay_text(tiny_model: AnyGen) -> None:
    vocab = tiny_model.vocab
    text = "draw <|image|> then <|/image|> and <|eos|> <|audio|>"
    ids = tiny_model.processor.encode([TextSegment(text)])
    assert all(i < vocab.text_size for i in ids), "user text produced a special id"
    assert tiny_model.processor.decode(ids) == [TextSegment(text)]


@pytest.mark.parametrize("bad", ["unclosed", "stray_end", "wrong_codebook"])
def test_malformed_spans_raise(tiny_model: AnyGen, bad: str) -> None:
    vocab = tiny_model.vocab
    begin, end = vocab.begin_id("audio"), vocab.end_id("audio")
    codes = vocab.to_global("audio", torch.zeros(4, dtype=torch.long)).tolist()
    ids = {"unclosed": [begin, *codes], "stray_end": [5, end],
           "wrong_codebook": [begin, codes[1], codes[0], end]}[bad]
    with pytest.raises(InvalidArgumentError):
        tiny_model.processor.decode(ids)


def test_bad_arguments_raise(tiny_model: AnyGen) -> None:
    with pytest.raises(InvalidArgumentError, match="list of segments"):
        tiny_model.processor.encode("a red circle")
    with pytest.raises(InvalidArgumentError, match="targets"):
        tiny_model.processor([[TextSegment("a")]], [])
    with pytest.raises(InvalidArgumentError, match="max_length"):
        tiny_model.processor([[TextSegment("a red circle " * 20)]], max_length=8)
    with pytest.raises(InvalidArgumentError, match="video"):
        tiny_model.processor.encode([CodesSegment("video", torch.zeros(2))])


def test_drop_condition_removes_only_the_named_modalities(tiny_model: AnyGen) -> None:
    image = ImageSegment(_palette_image(tiny_model.tokenizers["image"], 2))
    prompt = [image, TextSegment("make it blue")]
    assert drop_condition(prompt) == [image]
    assert drop_condition(prompt, ("text", "image")) == []


@pytest.mark.parametrize("codes, match", [
    (torch.arange(16, dtype=torch.float32), "dtype torch.float32; codes must be an integer tensor"),
    (torch.full((16,), 1.7, dtype=torch.float64), "dtype torch.float64"),
    (torch.ones(16, dtype=torch.bool), "dtype torch.bool"),
    (torch.arange(3), r"holds 3 codes, but one image span of this model holds exactly 16 \(tokens_for\(\(32, 32\)\)\)"),
    (torch.arange(0), "holds 0 codes, but one image span of this model holds exactly 16"),
    (torch.arange(16)[None], r"has shape \(1, 16\)"),
])
def test_image_codes_that_cannot_fill_a_span_are_refused(tiny_model: AnyGen, codes: torch.Tensor, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        tiny_model.processor.encode([CodesSegment("image", codes)])


def test_audio_codes_must_fill_whole_frames(tiny_model: AnyGen) -> None:
    with pytest.raises(InvalidArgumentError, match="holds 3 codes; one audio span holds a positive multiple of 2"):
        tiny_model.processor.encode([CodesSegment("audio", torch.arange(3))])
    with pytest.raises(InvalidArgumentError, match="dtype torch.float32"):
        tiny_model.processor.encode([CodesSegment("audio", torch.tensor([1.9, 2.2]))])
    ids = tiny_model.processor.encode([CodesSegment("audio", torch.tensor([1, 2], dtype=torch.int32))])
    assert tiny_model.vocab.to_local("audio", torch.tensor(ids[1:-1])).tolist() == [1, 2]


def test_generated_image_codes_encode_back_to_the_same_ids(tiny_model: AnyGen) -> None:
    vocab = tiny_model.vocab
    ids = [vocab.begin_id("image"), *vocab.to_global("image", torch.arange(16) % 64).tolist(), vocab.end_id("image")]
    (segment,) = tiny_model.processor.decode(ids, decode_media=False)
    assert tiny_model.processor.encode([segment]) == ids


def test_an_image_vq_span_holds_the_codes_of_its_configured_size() -> None:
    """ImageVQ keeps its size in its config: 32x32 pixels at a downsampling of 4 are 64 codes."""
    vq = ImageVQ(ImageVQConfig(channels=[8, 8, 8], res_blocks=0, latent_dim=4, image_size=[32, 32],
                               quantizer=QuantizerConfig(codebook_size=16, codebook_dim=4)))
    with pytest.raises(InvalidArgumentError, match=r"holds 3 codes, but one image span .* exactly 64"):
        span_codes(CodesSegment("image", torch.arange(3)), vq)
    assert torch.equal(span_codes(CodesSegment("image", torch.arange(64) % 16), vq), torch.arange(64) % 16)
