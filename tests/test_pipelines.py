"""The pipeline API on a tiny random model: types, shapes, determinism and argument errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
import numpy as np
from PIL import Image

import anygen
from anygen.errors import CheckpointError, InvalidArgumentError, MediaError
from anygen.model import AnyGen
from anygen.pipelines import SILENCE_PEAK, AnyGenPipeline
from anygen.generation.ranking import edit_change_weight, edit_ranking_texts, edit_sources, ranking_texts
from anygen.generation.streaming import RowDone, SegmentDone
from anygen.types import AudioSegment, ImageSegment, TextSegment


@pytest.fixture()
def pipe(tiny_model: AnyGen) -> AnyGenPipeline:
    return AnyGenPipeline(tiny_model, image_size=(32, 32), max_audio_seconds=0.5)


def seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def test_text_to_image_types_sizes_and_determinism(pipe: AnyGenPipeline) -> None:
    prompts = ["a red circle", "two green triangles"]
    images = pipe.text_to_image(prompts, num_images_per_prompt=2, generator=seed(0)).images
    assert len(images) == 4 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in images)
    again = pipe.text_to_image(prompts, num_images_per_prompt=2, generator=seed(0)).images
    assert [i.tobytes() for i in images] == [i.tobytes() for i in again]
    other = pipe.text_to_image(prompts, num_images_per_prompt=2, generator=seed(1)).images
    assert [i.tobytes() for i in images] != [i.tobytes() for i in other]
    tensor = pipe.text_to_image("", output_type="pt", generator=seed(0), height=32, width=32).images
    assert tensor.shape == (1, 3, 32, 32) and 0 <= tensor.min() and tensor.max() <= 1
    array = pipe.text_to_image("a", output_type="np", negative_prompt="blue").images
    assert isinstance(array, np.ndarray) and array.shape == (1, 32, 32, 3)
    (plain,) = pipe.text_to_image(prompts, generator=seed(0), output_type="pt", return_dict=False)
    assert torch.equal(plain, pipe.text_to_image(prompts, generator=seed(0), output_type="pt").images)
    wide = AnyGenPipeline(pipe.model, image_size=(16, 48)).text_to_image("", output_type="pt").images
    assert wide.shape == (1, 3, 16, 48)



def test_caption_likelihood_is_the_log_likelihood_of_the_caption_after_the_image(pipe: AnyGenPipeline) -> None:
    """Against transformers' own loss on the training layout of a caption row; a batch with texts of other
    lengths (padded) scores each row as it scores alone."""
    image = pipe.text_to_image("a red circle", generator=seed(0), output_type="pt", num_candidates=1).images
    texts = ["a red circle", "two green triangles above a small blue square", "x"]
    scores = pipe.caption_likelihood(image.expand(3, -1, -1, -1), texts)
    for text, score in zip(texts, scores):
        batch = pipe.model.processor([[ImageSegment(image[0])]], [[TextSegment(text)]])
        with torch.no_grad():
            loss = pipe.model.core(input_ids=batch.input_ids, labels=batch.labels).loss
        predicted = int((batch.labels[:, 1:] >= 0).sum())  # the text's tokens and <|eos|>
        assert score == pytest.approx(-loss.item() * predicted, rel=1e-4)
        assert pipe.caption_likelihood(image, text) == pytest.approx([score], rel=1e-5)


def test_picture_scores_are_the_log_likelihood_of_the_picture_after_the_text(pipe: AnyGenPipeline) -> None:
    """Against transformers' own loss on the text -> image training layout, over the picture's codes and closing
    token (not its opening token nor the row's ``<|eos|>``); texts of other lengths score as they do alone."""
    image = pipe.text_to_image("a red circle", generator=seed(0), output_type="pt", num_candidates=1).images
    span = pipe._picture_ids(image)[0]
    texts = ["a red circle", "two green triangles above a small blue square", "x"]
    scores = pipe._picture_scores([span], [texts])[0]
    for text, score in zip(texts, scores):
        batch = pipe.model.processor([[TextSegment(text)]], [[ImageSegment(image[0])]])
        labels = batch.labels.clone()
        labelled = (labels[0] >= 0).nonzero()[:, 0]
        labels[0, labelled[0]] = labels[0, labelled[-1]] = -100  # the opening token and <|eos|>
        with torch.no_grad():
            loss = pipe.model.core(input_ids=batch.input_ids, labels=labels).loss
        assert score == pytest.approx(-loss.item() * (len(span) - 1), rel=1e-4)
        assert pipe._picture_scores([span], [[text]]) == [pytest.approx([score], rel=1e-5)]


def test_a_caption_is_the_option_under_which_the_picture_is_likeliest(pipe: AnyGenPipeline) -> None:
    """``caption`` (``check=True``) returns the option of :func:`caption_options` with the highest picture score
    plus ``CAPTION_TEXT_WEIGHT`` times its caption likelihood, and the model's own words when they win; a caption
    naming no shape, or ``check=False``, is the decoded text."""
    from anygen.generation.ranking import CAPTION_TEXT_WEIGHT, caption_options

    images = pipe.text_to_image(["a red circle", "two blue squares"], generator=seed(2), output_type="pt",
                                num_candidates=1).images
    spans = pipe._picture_ids(images)
    captions = ["This shows a red circle.", "two blue squares above a green star", "a yellow triangle",
                "three pink stars", "nothing at all"]
    pictures = [0, 1, 0, 1, 0]
    checked = pipe._checked_captions([spans[i] for i in pictures], captions)
    changed = 0
    for i, caption, out in zip(pictures, captions[:-1], checked):
        options = caption_options(caption)
        totals = [p + CAPTION_TEXT_WEIGHT * t for p, t in zip(pipe._picture_scores([spans[i]], [options])[0],
                                                               pipe.caption_likelihood([images[i]] * len(options),
                                                                                       options))]
        best = max(range(len(options)), key=totals.__getitem__)
        assert out == (caption if best == 0 else options[best])
        changed += best > 0
    assert changed  # the check replaced at least one caption
    assert checked[-1] == "nothing at all"
    raw = pipe.caption(images, check=False).texts
    assert pipe.caption(images).texts == pipe._checked_captions(spans, raw)


def test_generate_checks_each_caption_against_the_picture_before_it(pipe: AnyGenPipeline,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A text of the answer that names shapes is checked (as ``caption`` checks) against the answer's last picture
    before it or, in an answer that draws none, the prompt's last picture; other texts, and texts with no picture
    before them, stay as written; ``check_captions=False`` returns the answer as sampled."""
    images = pipe.text_to_image(["a red circle", "two blue squares"], generator=seed(2), output_type="pt",
                                num_candidates=1).images
    processor = pipe.model.processor
    drawn = processor.decode(processor.encode([ImageSegment(images[1])]), decode_media=False)
    captions = ["This shows a yellow triangle.", "three pink stars", "two blue squares above a green star"]
    answer = [TextSegment(captions[0]), TextSegment("Answer:"), *drawn, TextSegment(captions[1]),
              TextSegment(captions[2])]
    question = [TextSegment("What is this?"), ImageSegment(images[0])]
    checked = pipe._checked_answer(question, answer)
    spans = pipe._picture_ids(images)
    expected = pipe._checked_captions([spans[1], spans[1]], captions[1:])
    assert [s.text for s in checked if isinstance(s, TextSegment)] == [captions[0], "Answer:", *expected]
    assert checked[2:3] == drawn
    # an answer that draws nothing describes the prompt's picture
    expected_first = pipe._checked_captions([spans[0]], captions[:1])
    assert pipe._checked_answer(question, answer[:2]) == [TextSegment(expected_first[0]), answer[1]]
    assert [*expected_first, *expected] != captions  # the check changed at least one of them
    assert pipe._checked_answer([TextSegment("draw")], answer[:2]) == answer[:2]

    asked = []
    monkeypatch.setattr(pipe, "_checked_answer", lambda prompt, rows: asked.append(rows) or [TextSegment("mended")])
    ask = dict(max_new_tokens=6, min_new_tokens=4, output_modalities=["text"])
    prompt = ["a red circle", ImageSegment(images[0])]
    written = pipe.generate(prompt, generator=seed(4), check_captions=False, **ask).segments
    assert not asked and written
    assert pipe.generate(prompt, generator=seed(4), **ask).segments == [TextSegment("mended")]
    assert asked == [written]


def test_generate_reads_text_greedily_unless_told_otherwise(pipe: AnyGenPipeline) -> None:
    """A modality ``sampling`` leaves out samples as ``GENERATE_SAMPLING`` says (text greedy); one it names, as
    named; ``stream`` follows the same defaults."""
    from anygen.generation.sampling import SamplingParams
    from anygen.pipelines import GENERATE_SAMPLING

    assert GENERATE_SAMPLING["text"].do_sample is False
    prompt = ["how many shapes?"]

    def streamed(generator: torch.Generator, **kwargs) -> list[int]:
        events = pipe.stream(prompt, max_new_tokens=12, generator=generator, output_modalities=[], min_new_tokens=1,
                             **kwargs)
        return pipe.prompt_ids([e.segment for e in events if isinstance(e, SegmentDone)])

    default = pipe.generate(prompt, max_new_tokens=12, generator=seed(0), output_modalities=[])
    greedy = {"text": SamplingParams(do_sample=False)}
    again = pipe.generate(prompt, max_new_tokens=12, generator=seed(5), output_modalities=[], sampling=greedy)
    assert pipe.prompt_ids(default.segments) == pipe.prompt_ids(again.segments) == streamed(seed(1))
    hot = {tuple(streamed(seed(i), sampling={"text": SamplingParams(2.0)})) for i in range(3)}
    assert len(hot) > 1  # text sampled as asked varies with the seed; the default does not
    with pytest.raises(InvalidArgumentError, match="sampling"):
        pipe.generate(prompt, sampling=[SamplingParams()])
    as_dict = pipe.generate(prompt, max_new_tokens=12, generator=seed(5), output_modalities=[],
                            sampling={"text": {"do_sample": False}})  # a dict of SamplingParams' fields is one too
    assert pipe.prompt_ids(as_dict.segments) == pipe.prompt_ids(default.segments)
    with pytest.raises(InvalidArgumentError, match=r"sampling\['text'\] has unknown field\(s\) \['temprature'\]"):
        pipe.generate(prompt, sampling={"text": {"temprature": 0.5}})
    with pytest.raises(InvalidArgumentError, match=r"sampling\['text'\] must be a SamplingParams or a dict"):
        pipe.generate(prompt, sampling={"text": 0.5})
    with pytest.raises(InvalidArgumentError, match="temperature"):
        pipe.stream(prompt, sampling={"text": {"temperature": 0.0}})


def test_text_to_image_returns_the_candidate_the_model_ranks_first(pipe: AnyGenPipeline) -> None:
    """``num_candidates=k`` samples the k images ``num_images_per_prompt=k`` would (same seeds) and keeps the one
    :meth:`candidate_scores` scores highest: the prompt's ranking texts (:func:`ranking_texts`), each scored by
    :meth:`caption_likelihood`; a prompt without shapes is ranked by itself, an empty one keeps its first."""
    picked_later = 0
    for prompt in ("a red circle", "two green triangles", "a blue square below a star", "a cat"):
        candidates = pipe.text_to_image(prompt, num_images_per_prompt=4, num_candidates=1, generator=seed(3),
                                        output_type="pt").images
        scores = pipe.candidate_scores(candidates, prompt)
        ranking = ranking_texts(prompt)
        assert scores[0] == pytest.approx(
            ranking.score(pipe.caption_likelihood([candidates[0]] * len(ranking.texts), list(ranking.texts))))
        best = max(range(4), key=scores.__getitem__)
        (image,) = pipe.text_to_image(prompt, num_candidates=4, generator=seed(3), output_type="pt").images
        assert torch.equal(image, candidates[best])
        picked_later += best > 0
    assert picked_later  # the ranking chose something other than the first sample at least once
    unconditional = pipe.text_to_image("", num_images_per_prompt=3, num_candidates=1, generator=seed(4),
                                       output_type="pt").images
    (first,) = pipe.text_to_image("", num_candidates=3, generator=seed(4), output_type="pt").images
    assert torch.equal(first, unconditional[0])


def test_near_misses_are_scored_for_the_shortlist_only(pipe: AnyGenPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more candidates than ``SHORTLIST``, every candidate is scored on the prompt's captions and only the
    ``SHORTLIST`` that the captions rank highest on its sentence and near misses; the best of those by the full
    score (:meth:`candidate_scores`) is kept."""
    monkeypatch.setattr("anygen.pipelines.SHORTLIST", 2)
    prompt, k = "two green triangles", 5
    candidates = pipe.text_to_image(prompt, num_images_per_prompt=k, num_candidates=1, generator=seed(3),
                                    output_type="pt").images
    ranking = ranking_texts(prompt)
    by_captions = [sum(pipe.caption_likelihood([c] * ranking.captions, list(ranking.texts[:ranking.captions])))
                   for c in candidates]
    shortlist = sorted(sorted(range(k), key=lambda j: -by_captions[j])[:2])
    scores = pipe.candidate_scores(candidates, prompt)
    scored, text_scores = [], pipe._text_scores
    monkeypatch.setattr(pipe, "_text_scores", lambda spans, texts, **kw: scored.append([len(t) for t in texts])
                        or text_scores(spans, texts, **kw))
    (image,) = pipe.text_to_image(prompt, num_candidates=k, generator=seed(3), output_type="pt").images
    assert torch.equal(image, candidates[max(shortlist, key=scores.__getitem__)])
    assert scored == [[ranking.captions] * k, [len(ranking.texts) - ranking.captions] * 2]


def test_edit_image_returns_the_candidate_the_model_ranks_first(pipe: AnyGenPipeline) -> None:
    """``edit_image(num_candidates=k)`` samples the k edits ``num_images_per_prompt=k`` would and keeps the one
    :meth:`candidate_scores` ranks first for the source as the model describes it (``_edit_source``) with the
    instruction applied, less ``edit_change_weight`` times its mean absolute difference from the source (a move
    gains by it); an instruction the scene language cannot read keeps the first sample."""
    source = Image.new("RGB", (32, 32), "white")
    for instruction in ("add a blue circle", "move the red circle up", "make it nicer"):
        candidates = pipe.edit_image(source, instruction, num_images_per_prompt=4, num_candidates=1,
                                     generator=seed(5), output_type="pt").images
        described = pipe._edit_source(torch.ones(3, 32, 32), pipe.caption(source).texts[0], instruction)
        ranking = edit_ranking_texts(described, instruction)
        best = 0
        if ranking.texts != ("",):
            scores = pipe.candidate_scores(candidates, ranking.texts[ranking.captions])  # its canonical sentence
            change = (candidates - 1.0).abs().mean((1, 2, 3))  # the source is white
            best = max(range(4), key=lambda j: scores[j] - edit_change_weight(instruction) * float(change[j]))
        (edited,) = pipe.edit_image(source, instruction, num_candidates=4, generator=seed(5), output_type="pt").images
        assert torch.equal(edited, candidates[best])


def test_candidates_rank_by_their_texts_plus_a_bonus(pipe: AnyGenPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_best_indices`` adds each candidate's bonus to its texts' score: with the texts scoring every candidate
    alike, the bonus decides, per run of k."""
    monkeypatch.setattr(pipe, "_text_scores", lambda spans, texts, **kw: [[-1.0] * len(t) for t in texts])
    rankings = [ranking_texts("a red circle"), ranking_texts("two blue stars")]
    spans = [[0]] * 6
    assert pipe._best_indices(spans, rankings, 3) == [0, 3]  # ties keep the first
    assert pipe._best_indices(spans, rankings, 3, [0.0, 0.5, -1.0, -2.0, -3.0, 1.0]) == [1, 5]


def test_an_edit_source_the_caption_contradicts_is_the_likeliest_that_holds_the_named_object(
        pipe: AnyGenPipeline) -> None:
    picture = torch.ones(3, 32, 32)
    assert pipe._edit_source(picture, "a red circle", "make the red circle blue") == "a red circle"
    options = edit_sources("a green square", "make the red circle blue")
    likelihoods = pipe.caption_likelihood([picture] * len(options), options)
    assert pipe._edit_source(picture, "a green square", "make the red circle blue") == \
        options[int(np.argmax(likelihoods))]


def test_text_scores_read_each_span_once_and_match_a_full_forward(pipe: AnyGenPipeline,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans of two lengths, several texts each, in passes of 2 rows: every score is the log-likelihood a
    whole-row forward gives (the spans' cached keys and values serve their texts); the whole-row path that cores
    with gated adapters take gives the same numbers."""
    vocab, encode = pipe.model.vocab, pipe.model.processor.encode
    image = pipe.text_to_image("a red circle", generator=seed(0), output_type="pt", num_candidates=1).images[0]
    spans = [encode([ImageSegment(image)]), encode([TextSegment("hello there")]), encode([ImageSegment(image * 0.5)])]
    texts = [["a red circle", "x"], ["two green triangles above a square"], ["a", "a blue star", "b c"]]
    scores = pipe._text_scores(spans, texts, rows_per_pass=2)
    for span, row, got in zip(spans, texts, scores):
        for text, score in zip(row, got):
            ids = torch.tensor([[vocab.bos_id, *span, *encode([TextSegment(text)]), vocab.eos_id]])
            with torch.no_grad():
                logits = pipe.model.core(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            n = len(encode([TextSegment(text)])) + 1
            assert score == pytest.approx(float(logits[-n:].gather(-1, ids[0, -n:, None]).sum()), rel=1e-4)
    monkeypatch.setattr("anygen.pipelines.has_gated_adapters", lambda core: True)
    again = pipe._text_scores(spans, texts, rows_per_pass=2)
    assert [pytest.approx(row, rel=1e-4) for row in scores] == again


def test_speak_returns_the_clip_the_model_ranks_first(pipe: AnyGenPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidates of ``speak(text, num_candidates=3)`` are the clips of ``speak([text] * 3)`` (same seeds); the
    one kept is the one that scores highest (a fixed scorer here, to isolate the choice) as the tokenizer reads
    the clip back, as a transcription would hear it."""
    out = pipe.speak(["say hello"] * 3, num_candidates=1, generator=seed(4))
    candidates = out.audios
    assert not torch.equal(candidates[0], candidates[1])
    (clip,) = pipe.speak("say hello", num_candidates=3, generator=seed(4)).audios
    assert any(torch.equal(clip, c) for c in candidates)
    from anygen.pipelines import SPEAK_CANDIDATES

    assert SPEAK_CANDIDATES > 1 and torch.equal(  # the default is the pick of SPEAK_CANDIDATES
        pipe.speak("say hello", generator=seed(4)).audios[0],
        pipe.speak("say hello", num_candidates=SPEAK_CANDIDATES, generator=seed(4)).audios[0])
    scored = []

    def fixed(spans, texts):
        scored.extend(spans)
        return [[0.0], [-1.0], [2.0]][: len(spans)]

    monkeypatch.setattr(pipe, "_text_scores", fixed)
    (picked,) = pipe.speak("say hello", num_candidates=3, generator=seed(4)).audios
    assert torch.equal(picked, candidates[2])
    assert scored == [pipe.model.processor.encode([AudioSegment(c, out.sample_rate)]) for c in candidates]


def test_speak_ranks_a_music_request_by_the_notes_it_hears(pipe: AnyGenPipeline,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A text that names notes or a chord ranks its clips by ``heard_match`` first (fixed scores here), the text's
    likelihood after the clip second; ``hear_notes=False`` and a text without notes rank by the likelihood alone."""
    candidates = pipe.speak(["play C4, E4 and G5"] * 3, num_candidates=1, generator=seed(4)).audios
    asked = []

    def heard(waveform, sample_rate, request):
        asked.append(request)
        index = [i for i, c in enumerate(candidates) if torch.equal(c, waveform.detach().cpu())]
        return [0.5, 1.0, 0.75][index[0]] if index else 0.0

    monkeypatch.setattr("anygen.pipelines.heard_match", heard)
    monkeypatch.setattr(pipe, "_text_scores", lambda spans, texts: [[0.0], [-1.0], [2.0]][: len(spans)])
    picked = pipe.speak("play C4, E4 and G5", num_candidates=3, generator=seed(4)).audios[0]
    assert torch.equal(picked, candidates[1]) and asked == [["C4", "E4", "G5"]] * 3
    unheard = pipe.speak("play C4, E4 and G5", num_candidates=3, generator=seed(4), hear_notes=False).audios[0]
    assert torch.equal(unheard, candidates[2]) and len(asked) == 3
    pipe.speak("a B minor chord", num_candidates=3, generator=seed(4))
    assert asked[3:] == [("B", "minor")] * 3
    pipe.speak("say hello", num_candidates=3, generator=seed(4))
    assert len(asked) == 6


def test_generate_samples_candidates_for_a_music_request(pipe: AnyGenPipeline,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt ending with notes to play samples SPEAK_CANDIDATES answers (audio allowed); any other prompt, or
    ``num_candidates=1``, samples one; the first answer is the single answer's seed."""
    from anygen.pipelines import SPEAK_CANDIDATES

    counts, real_sample = [], pipe._sample

    def counted(rows, *args, **kwargs):
        counts.append(len(rows))
        return real_sample(rows, *args, **kwargs)

    monkeypatch.setattr(pipe, "_sample", counted)
    ask = dict(max_new_tokens=12, min_new_tokens=8, generator=seed(3))
    assert pipe.generate(["Play these notes: C4 E4 G4"], num_candidates=3, **ask).segments
    pipe.generate(["Play these notes: C4 E4 G4"], **ask)
    pipe.generate(["an A minor chord"], output_modalities=["audio"], **ask)
    assert counts == [3, SPEAK_CANDIDATES, SPEAK_CANDIDATES]
    one = pipe.generate(["Play these notes: C4 E4 G4"], num_candidates=1, **ask).segments
    pipe.generate(["Play these notes: C4 E4 G4"], output_modalities=["image"], **ask)
    pipe.generate(["say hello"], **ask)
    assert counts[3:] == [1, 1, 1]
    monkeypatch.setattr(pipe, "_best_heard", lambda answers, request: 0)
    assert pipe.generate(["Play these notes: C4 E4 G4"], **ask).segments == one
    with pytest.raises(InvalidArgumentError, match="num_candidates"):
        pipe.generate(["Play C4"], num_candidates=0)


def test_generate_keeps_the_answer_whose_first_clip_plays_the_request(pipe: AnyGenPipeline) -> None:
    """Answers are ranked by ear on their first audio span (real codes of rendered melodies, heard by
    ``heard_match``); an answer without audio ranks last and ties keep the first."""
    from anygen.data.melody import render_notes
    from anygen.types import CodesSegment

    rate = pipe._tokenizer("audio").sample_rate
    processor = pipe.model.processor

    def answer(notes: list[str]) -> list:
        ids = processor.encode([AudioSegment(render_notes(notes, "organ", sample_rate=rate), rate)])
        return [TextSegment("here:"), *processor.decode(ids, decode_media=False), TextSegment("done")]

    right, wrong, silent = answer(["C5", "E5", "G5"]), answer(["C5", "F5", "A5"]), [TextSegment("no clip")]
    assert any(isinstance(s, CodesSegment) for s in right)
    assert pipe._best_heard([silent, wrong, right, wrong], ["C5", "E5", "G5"]) == 2
    assert pipe._best_heard([silent, wrong, wrong], ["C5", "E5", "G5"]) == 1
    assert pipe._best_heard([silent, silent], ["C5"]) == 0


def test_edits_are_asked_in_the_order_the_training_items_use(pipe: AnyGenPipeline, monkeypatch) -> None:
    from anygen.data.corpus import DataConfig, build_item

    item = build_item(DataConfig(image_size=32), "train", "edit", np.random.default_rng(0))
    asked = []

    def record(rows, *args, **kwargs):
        asked.extend(rows)
        raise RuntimeError("recorded")

    monkeypatch.setattr(pipe, "_sample", record)
    with pytest.raises(RuntimeError, match="recorded"):
        pipe.edit_image(Image.new("RGB", (32, 32)), "make it blue")
    # the instruction, then the source picture, whose codes the target's then follow at a fixed offset
    assert [s.modality for s in asked[0]] == [s.modality for s in item["prompt"]] == ["text", "image"]

def test_edit_caption_speak_transcribe_generate(pipe: AnyGenPipeline) -> None:
    source = Image.new("RGB", (40, 40), "red")  # resized to the model's size
    (edited,) = pipe.edit_image(source, "make it blue", generator=seed(0)).images
    assert edited.size == (32, 32)
    (text,) = pipe.caption(source).texts
    assert isinstance(text, str)
    assert len(pipe.caption([source, source]).texts) == 2
    speech = pipe.speak("say hello", generator=seed(0))
    (wave,) = speech.audios
    assert speech.sample_rate == 8000 and wave.ndim == 1 and 0 < wave.numel() <= 4000 and wave.numel() % 400 == 0
    stereo = torch.sin(torch.linspace(0, 2000, 16000)).repeat(2, 1)
    assert isinstance(pipe.transcribe(stereo, 16000).texts[0], str)
    out = pipe.generate(["a red circle", ImageSegment(source)], max_new_tokens=30, generator=seed(0))
    assert out.segments and all(hasattr(s, "modality") for s in out.segments) and isinstance(out.finished, bool)
    events = list(pipe.stream([TextSegment("hi")], max_new_tokens=10, generator=seed(0)))
    assert isinstance(events[-1], RowDone)


@pytest.mark.parametrize("call, match", [
    (lambda p: p.text_to_image("a", num_images_per_prompt=0), "num_images_per_prompt"),
    (lambda p: p.text_to_image("a", guidance_scale=math.nan), "guidance_scale"),
    (lambda p: p.text_to_image("a", guidance_scale=-1.0), "guidance_scale"),
    (lambda p: p.text_to_image("a", temperature=0.0), "temperature"),
    (lambda p: p.text_to_image("a", top_p=0.0), "top_p"),
    (lambda p: p.text_to_image("a", height=20), "makes 32x32 images only"),
    (lambda p: p.text_to_image("a", height=64, width=64), "height=64, width=64 is not a size"),
    (lambda p: p.text_to_image("a", height=0), "height=0, width=32"),
    (lambda p: p.text_to_image("a", width=32.0), "width=32.0 must be an integer"),
    (lambda p: p.text_to_image("a", num_inference_steps=4), "num_inference_steps=4 needs decoder='diffusion'"),
    (lambda p: p.text_to_image(["a", "b"], negative_prompt=["c"] * 3), "3 negative prompts"),
    (lambda p: p.text_to_image("a", callback_on_step_end=3), "callback_on_step_end"),
    (lambda p: p.text_to_image("a", decoder="diffusion"), "decoder"),
    (lambda p: p.text_to_image("a", output_type="jpeg"), "output_type"),
    (lambda p: p.text_to_image(["a", 3]), "prompt"),
    (lambda p: p.text_to_image("a", num_candidates=0), "num_candidates"),
    (lambda p: p.caption_likelihood([Image.new("RGB", (32, 32))] * 3, ["a", "b"]), "3 images but 2 texts"),
    (lambda p: p.candidate_scores([Image.new("RGB", (32, 32))] * 2, ["a", "b"]), "prompt must be one string"),
    (lambda p: p.edit_image([Image.new("RGB", (32, 32))] * 2, "x"), "2 images but 1 instructions"),
    (lambda p: p.speak("   "), "non-empty"),
    (lambda p: p.speak("hi", max_seconds=0.0), "max_seconds"),
    (lambda p: p.transcribe(torch.zeros(100), 0), "sample_rate"),
    (lambda p: p.transcribe(torch.zeros(1600), 16000.5), "16000.5 must be a whole number"),
    (lambda p: p.transcribe(torch.zeros(1600)), "pass its sample_rate"),
    (lambda p: p.speak(["hi", ""]), "non-empty"),
    # A prompt and its answer beyond the context: the error names what set the answer's length.
    (lambda p: p.speak("hi", max_seconds=1000.0),
     r"max_seconds=1000 of audio \(\d+ new tokens\) exceed the model's context of \d+ tokens; lower max_seconds to "
     r"\d+(\.\d)? or less, or shorten the text$"),
    (lambda p: p.text_to_image("red " * 600), r"the prompt \(\d+ tokens\) and the image .*; shorten the prompt$"),
    (lambda p: p.text_to_image("red", negative_prompt="blue " * 600), r"\(negative_prompt\) \(\d+ tokens\)"),
    (lambda p: p.generate("red " * 600, max_new_tokens=8), r"max_new_tokens=8 .* or lower max_new_tokens$"),
])
def test_bad_arguments_raise_clear_errors(pipe: AnyGenPipeline, call, match: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sampling(*args, **kwargs):
        raise AssertionError("the sampler ran before the bad argument was refused")

    monkeypatch.setattr(pipe, "sampler", no_sampling)
    with pytest.raises(InvalidArgumentError, match=match):
        call(pipe)


def test_the_speech_that_fits_the_context_is_what_the_error_says(pipe: AnyGenPipeline) -> None:
    """The longest max_seconds the error names fits (a tenth of a second more would not)."""
    with pytest.raises(InvalidArgumentError, match="lower max_seconds to") as refused:
        pipe.speak("hello there", max_seconds=1000.0, num_candidates=1)
    fits = float(re.search(r"lower max_seconds to ([\d.]+)", str(refused.value)).group(1))
    with pytest.raises(InvalidArgumentError, match="exceed the model's context"):
        pipe.speak("hello there", max_seconds=fits + 0.1, num_candidates=1)
    out = pipe.speak("hello there", max_seconds=fits, num_candidates=1, generator=torch.Generator().manual_seed(0))
    assert out.audios[0].shape[-1] > 0


@pytest.mark.parametrize("call, match", [
    (lambda p: p.edit_image(Image.new("RGB", (32, 32)), "x", image_guidance_scale=-1.0), "image_guidance_scale"),
    (lambda p: p.edit_image(Image.new("RGB", (32, 32)), "x", guidance_scale=math.inf), "guidance_scale"),
    (lambda p: p.inpaint(Image.new("RGB", (32, 32)), torch.ones(32, 32), "x", image_guidance_scale=101.0),
     "image_guidance_scale"),
])
def test_edit_guidance_scales_are_refused_before_the_image_is_read(pipe: AnyGenPipeline, call, match: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import anygen.pipelines

    def no_reading(*args, **kwargs):
        raise AssertionError("the image was read and encoded before the bad scale was refused")

    monkeypatch.setattr(anygen.pipelines, "image_tensors", no_reading)
    with pytest.raises(InvalidArgumentError, match=match):
        call(pipe)


def test_a_generator_list_of_the_wrong_length_is_refused(pipe: AnyGenPipeline) -> None:
    with pytest.raises(InvalidArgumentError, match="one per output"):
        pipe.text_to_image("a", generator=[seed(0)] * 3)
    with pytest.raises(InvalidArgumentError, match="one per row"):
        pipe.caption([Image.new("RGB", (32, 32))], generator=[seed(0)] * 2)


@pytest.mark.parametrize("generator, match", [(0, "got int"), ([0], r"list holding \['int'\]"), ("7", "got str")])
def test_a_seed_in_place_of_a_generator_is_refused_by_name(pipe: AnyGenPipeline, generator, match: str) -> None:
    for call in (lambda: pipe.text_to_image("a", generator=generator), lambda: pipe.speak("a", generator=generator),
                 lambda: pipe.caption(Image.new("RGB", (32, 32)), generator=generator)):
        with pytest.raises(InvalidArgumentError, match=f"generator must be a torch.Generator .*{match}"):
            call()


def test_bad_media_and_misspelled_keywords(pipe: AnyGenPipeline) -> None:
    with pytest.raises(MediaError):
        pipe.transcribe(torch.tensor([0.0, math.nan] * 400), 8000)
    with pytest.raises(MediaError):
        pipe.caption(b"not an image")
    with pytest.raises(TypeError):
        pipe.text_to_image("a", guidance=2.0)


def test_a_pipeline_round_trips_through_disk(pipe: AnyGenPipeline, tmp_path) -> None:
    pipe.model.save_pretrained(tmp_path / "m")
    loaded = anygen.load(tmp_path / "m", image_size=(32, 32))
    a = pipe.text_to_image("a red circle", generator=seed(3), output_type="pt").images
    b = loaded.text_to_image("a red circle", generator=seed(3), output_type="pt").images
    assert torch.equal(a, b)


def test_load_without_a_shipped_model_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import anygen.assets

    monkeypatch.setattr(anygen.assets, "DEFAULT_MODEL", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="anygen.load"):
        anygen.load()


def test_anygen_eval_runs_every_suite_on_a_saved_model(pipe: AnyGenPipeline, tmp_path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluators drive a real pipeline end to end (a random model scores near zero, but every suite runs)."""
    import json

    from anygen.cli import main

    pipe.model.save_pretrained(tmp_path / "m")
    code = main(["eval", "--model", str(tmp_path / "m"), "--suite", "caption", "--n", "1",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert "caption" in json.dumps(result)
    asked, real = [], AnyGenPipeline.text_to_image
    monkeypatch.setattr(AnyGenPipeline, "text_to_image",
                        lambda self, *a, **k: asked.append(k.get("num_candidates")) or real(self, *a, **k))
    for option, expected in (([], None), (["--num-candidates", "2"], 2)):  # None: the pipeline's default
        asked.clear()
        assert main(["eval", "--model", str(tmp_path / "m"), "--suite", "shapes", "--n", "1", *option]) == 0
        assert asked == [expected] * 6  # one prompt per category


def test_eval_callables_seed_each_generate_call_and_pass_its_options(pipe: AnyGenPipeline,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``pipeline_callables``: the i-th call of a run gets the generator ``seed * 1_000_003 + i`` (what benchmarks
    rely on to seed as ``anygen eval`` does), ``generate_options`` reach ``generate``, and an answer that ends at
    once is scored as an empty one."""
    from types import SimpleNamespace

    from anygen.evaluation.cli import pipeline_callables
    from anygen.pipelines import EmptyAnswerError

    asked = []

    def fake(self, segments, generator=None, **options):
        asked.append((generator.initial_seed(), options))
        if len(asked) == 2:
            raise EmptyAnswerError("ended at once")
        return SimpleNamespace(segments=["ok"])

    monkeypatch.setattr(AnyGenPipeline, "generate", fake)
    generate = pipeline_callables(pipe, 3, generate_options={"check_captions": False}).generate
    assert [generate(["q"]), generate(["q"]), generate(["q"])] == [["ok"], [], ["ok"]]
    assert asked == [(3 * 1_000_003 + i, {"check_captions": False}) for i in range(3)]
    asked.clear()
    pipeline_callables(pipe, 0).generate(["q"])
    assert asked == [(0, {})]


def test_stream_can_be_resumed_on_other_threads(pipe: AnyGenPipeline) -> None:
    """Web servers pull each event on whichever worker thread is free."""
    from concurrent.futures import ThreadPoolExecutor

    prompt = [TextSegment("a red circle")]
    expected = list(pipe.stream(prompt, max_new_tokens=24, guidance_scale=2.0, generator=seed(4)))
    events = pipe.stream(prompt, max_new_tokens=24, guidance_scale=2.0, generator=seed(4))
    got = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        while (event := pool.submit(next, events, None).result()) is not None:
            got.append(event)
    assert [type(e) for e in got] == [type(e) for e in expected]
    assert [getattr(e, "text", None) for e in got] == [getattr(e, "text", None) for e in expected]


def test_dtype_device_and_to(pipe: AnyGenPipeline, tmp_path) -> None:
    assert pipe.to(torch.bfloat16) is pipe and pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    image = pipe.text_to_image("a red circle", generator=seed(0), output_type="pt").images
    assert image.dtype == torch.float32 and image.shape == (1, 3, 32, 32)  # media stays float32
    pipe.to("cpu", torch.float32)
    assert pipe.dtype == torch.float32
    pipe.model.save_pretrained(tmp_path / "m")
    loaded = anygen.load(tmp_path / "m", torch_dtype=torch.bfloat16, device="cpu", image_size=(32, 32))
    assert loaded.dtype == torch.bfloat16
    assert anygen.load(tmp_path / "m", dtype="float16", image_size=(32, 32)).dtype == torch.float16
    assert pipe.to("bfloat16").dtype == torch.bfloat16 and pipe.to("cpu", "torch.float32").dtype == torch.float32
    assert anygen.load(tmp_path / "m", torch_dtype="auto", image_size=(32, 32)).dtype == torch.float32
    for bad in ((torch.int64,), ("cpu", "cpu"), (torch.float16, torch.float32), (3,)):
        with pytest.raises(InvalidArgumentError):
            pipe.to(*bad)
    weights = pipe.model.core.lm_head.weight.clone()
    for device, match in (("meta", "device='meta' holds no weights"), ("gpu", "device='gpu' is not a device name"),
                          ("cuda:99", r"device='cuda:99' is not available on this machine \(.*\); use device='cpu'")):
        with pytest.raises(InvalidArgumentError, match=match):
            pipe.to(device)
        with pytest.raises(InvalidArgumentError, match=match):
            anygen.load(tmp_path / "m", device=device, image_size=(32, 32))
    assert pipe.device.type == "cpu" and torch.equal(pipe.model.core.lm_head.weight, weights)  # nothing moved
    for kwargs, match in (({"dtype": "int8"}, "dtype='int8' must be a floating-point"),
                          ({"torch_dtype": "float17"}, "torch_dtype='float17'"),
                          ({"dtype": torch.float16, "torch_dtype": torch.float16}, "not both")):
        with pytest.raises(InvalidArgumentError, match=match):
            anygen.load(tmp_path / "m", image_size=(32, 32), **kwargs)


def test_progress_bars_show_for_slow_calls_and_can_be_disabled(pipe: AnyGenPipeline, capsys) -> None:
    pipe.set_progress_bar_config(delay=0)  # as if every call were slow
    pipe.text_to_image("a red circle", generator=seed(0))
    assert "text_to_image" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True, delay=0)
    pipe.text_to_image("a red circle", generator=seed(0))
    pipe.caption(Image.new("RGB", (32, 32)), max_new_tokens=3)
    assert capsys.readouterr().err == ""


def test_callback_on_step_end_sees_every_token(pipe: AnyGenPipeline) -> None:
    seen = []

    def callback(p: AnyGenPipeline, index: int, timestep: None, kwargs: dict) -> dict:
        assert p is pipe and timestep is None
        seen.append((index, kwargs["tokens"].clone()))
        return kwargs

    pipe.text_to_image(["a", "b"], generator=seed(0), callback_on_step_end=callback, num_candidates=3)
    assert [i for i, _ in seen] == list(range(17))  # 16 codes and the end token
    assert all(tokens.shape == (6,) for _, tokens in seen)  # every candidate row


def test_speak_and_transcribe_take_batches(pipe: AnyGenPipeline) -> None:
    speech = pipe.speak(["say hello", "a red circle"], generator=seed(0))
    assert len(speech.audios) == 2 and all(w.ndim == 1 and w.numel() > 0 for w in speech.audios)
    texts = pipe.transcribe(speech.audios, speech.sample_rate, max_new_tokens=4).texts
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    pairs = [(w, speech.sample_rate) for w in speech.audios]
    assert pipe.transcribe(pairs, max_new_tokens=4).texts == texts
    audios, rate = pipe.speak("say hello", generator=seed(0), return_dict=False)
    assert rate == speech.sample_rate and len(audios) == 1


def test_the_segments_generate_returns_go_straight_into_the_tasks(pipe: AnyGenPipeline) -> None:
    picture = pipe.text_to_image("a red circle", num_candidates=1, generator=seed(0), output_type="pt").images[0]
    speech = pipe.speak("red", num_candidates=1, generator=seed(0))
    clip = speech.audios[0]
    assert pipe.caption([ImageSegment(picture), picture]).texts == pipe.caption([picture, picture]).texts
    assert pipe.transcribe(AudioSegment(clip, speech.sample_rate)).texts == pipe.transcribe(clip,
                                                                                             speech.sample_rate).texts
    edited = [pipe.edit_image(x, "make it blue", num_candidates=1, generator=seed(1), output_type="pt").images[0]
              for x in (ImageSegment(picture), picture)]
    assert torch.equal(*edited)
    with pytest.raises(InvalidArgumentError, match="audio carries sample_rate=.* but sample_rate=.* was passed too"):
        pipe.transcribe(AudioSegment(clip, speech.sample_rate), sample_rate=2 * speech.sample_rate)


def test_silent_clips_are_heard_as_nothing_and_leave_the_others_as_they_were(pipe: AnyGenPipeline) -> None:
    speech = pipe.speak(["say hello", "a red circle"], generator=seed(0))
    alone = pipe.transcribe(speech.audios, speech.sample_rate, max_new_tokens=6).texts
    rate = speech.sample_rate
    silence, hum = torch.zeros(rate), 0.5 * SILENCE_PEAK * torch.randn(rate, generator=seed(1)).clamp(-2, 2)
    clips = [silence, speech.audios[0], hum, speech.audios[1]]
    assert pipe.transcribe(clips, rate, max_new_tokens=6).texts == ["", alone[0], "", alone[1]]
    assert pipe.transcribe(silence, rate, generator=[seed(0)]).texts == [""]  # the model is not asked
    assert all(alone) and pipe.transcribe(clips, rate, max_new_tokens=6,
                                          generator=[seed(i) for i in range(4)]).texts == ["", alone[0], "", alone[1]]
    with pytest.raises(InvalidArgumentError, match="generator is a list of 1 but 4 clips were given"):
        pipe.transcribe(clips, rate, generator=[seed(0)])


def test_generate_takes_pil_images_as_they_are_and_names_other_unwrapped_media(pipe: AnyGenPipeline) -> None:
    picture = Image.new("RGB", (32, 32), (200, 30, 30))
    wrapped = pipe.generate(["what is it?", ImageSegment(picture)], max_new_tokens=6, generator=seed(0)).segments
    assert pipe.generate(["what is it?", picture], max_new_tokens=6, generator=seed(0)).segments == wrapped
    with pytest.raises(InvalidArgumentError, match=r"segments\[1\] has type Tensor; .*ImageSegment\(image\)"):
        pipe.generate(["what is it?", torch.rand(3, 32, 32)])


def test_output_modalities_take_one_name_or_a_list_that_may_name_text(pipe: AnyGenPipeline) -> None:
    prompt = ["a red circle"]
    only_text = pipe.generate(prompt, max_new_tokens=6, generator=seed(0), output_modalities=[]).segments
    assert pipe.generate(prompt, max_new_tokens=6, generator=seed(0), output_modalities=["text"]).segments == only_text
    one = [pipe.generate(prompt, max_new_tokens=20, generator=seed(1), output_modalities=value).segments
           for value in ("image", ["image"])]
    assert one[0] == one[1]
    for bad in ("video", ["image", "smell"], 3):
        with pytest.raises(InvalidArgumentError, match=r"output_modalities=.* \['text', 'image', 'audio'\]"):
            pipe.generate(prompt, output_modalities=bad)
        with pytest.raises(InvalidArgumentError, match="output_modalities="):
            pipe.stream(prompt, output_modalities=bad)


def test_a_clip_longer_than_the_context_holds_is_refused_with_the_longest_that_fits(pipe: AnyGenPipeline) -> None:
    """The longest clip the context holds is transcribed; one hop longer is refused by ``transcribe`` itself, in
    seconds, before the sampler's general error about prompt tokens."""
    tok, limit = pipe._tokenizer("audio"), pipe.model.core.config.max_position_embeddings
    rate, new = tok.sample_rate, 4
    fits, over = 1, limit * rate  # the most samples whose tokens fit, by bisection
    while over - fits > 1:
        middle = (fits + over) // 2
        fits, over = (middle, over) if tok.tokens_for(middle) + 3 + new <= limit else (fits, middle)
    assert len(pipe.transcribe(torch.zeros(fits), rate, max_new_tokens=new).texts) == 1
    with pytest.raises(InvalidArgumentError, match=r"audio\[1\] is [\d.]+ s long .* holds clips of at most [\d.]+ s"):
        pipe.transcribe([torch.zeros(fits), torch.zeros(fits + 1)], rate, max_new_tokens=new)


def test_an_answer_the_model_ends_at_once_is_an_error(pipe: AnyGenPipeline) -> None:
    """``generate`` never returns an empty answer: a model whose first token is <|eos|> gets EmptyAnswerError, or
    with ``min_new_tokens=1`` (``chat`` too) an answer that starts with another token."""
    from anygen.errors import GenerationError
    from anygen.pipelines import EmptyAnswerError

    with torch.no_grad():  # make <|eos|> the most likely token everywhere
        embedding = pipe.model.core.get_input_embeddings().weight  # (V, D), tied with the output layer
        embedding[:, 0] = 1.0
        embedding[pipe.model.vocab.eos_id, 0] = 50.0
    prompt = ["a red circle", ImageSegment(Image.new("RGB", (32, 32)))]
    with pytest.raises(EmptyAnswerError, match=r"first token was <\|eos\|>.*min_new_tokens=1") as info:
        pipe.generate(prompt, generator=seed(0))
    assert isinstance(info.value, GenerationError)
    # min_new_tokens=1, as the server asks: the answer starts with the likeliest token after <|eos|>.
    assert pipe.generate(prompt, generator=seed(0), max_new_tokens=8, min_new_tokens=1).segments
    assert pipe.chat([{"role": "user", "content": "hi"}], max_new_tokens=8, min_new_tokens=1).segments
    with pytest.raises(InvalidArgumentError, match=r"min_new_tokens=9 must be an integer in \[0, max_new_tokens=8\]"):
        pipe.generate(prompt, max_new_tokens=8, min_new_tokens=9)
