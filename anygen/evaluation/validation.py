"""Measure every judge on ground truth: correct pairs must pass, mismatched pairs must fail.

A *mismatched* pair puts a reference output next to a request it does not answer (another item's prompt whose
ground truth differs, an unedited source image, another word's audio...). ``python -m anygen.evaluation.validation
--n 50`` prints the rates quoted in docs/evaluation.md; the tests call the same functions with smaller ``n``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from anygen.data.edits import EDIT_OPS, sample_edit
from anygen.data.interleaved import DOC_KINDS, sample_document
from anygen.data.language import parse_text, satisfies
from anygen.data.melody import sample_chord, sample_melody
from anygen.data.scenes import render_scene
from anygen.evaluation.caption import score_caption
from anygen.evaluation.edit import score_edit
from anygen.evaluation.interleaved import score_document
from anygen.evaluation.melody import score_music_audio, score_music_text
from anygen.evaluation.prompts import heldout_prompts
from anygen.evaluation.shapes import score_image, shapes_prompts
from anygen.evaluation.speech import KEYWORDS, KeywordClassifier, default_classifier, speech_samples


@dataclass
class Rates:
    """Pass rate on correct pairs and on mismatched pairs, with their counts."""

    correct: float
    mismatched: float
    n_correct: int
    n_mismatched: int


def _rates(good: list[bool], bad: list[bool]) -> Rates:
    return Rates(sum(good) / max(1, len(good)), sum(bad) / max(1, len(bad)), len(good), len(bad))


def _supersampled(scene, size: int) -> Image.Image:
    return render_scene(scene, 4 * size).resize((size, size), Image.LANCZOS)


def shapes_rates(n_per_category: int = 30, seed: int = 0, size: int = 64, antialias: bool = False) -> Rates:
    """ShapesEval on renders of the prompts' scenes vs. on another same-category prompt the scene fails."""
    samples = shapes_prompts(n_per_category, seed, "test")
    render = _supersampled if antialias else render_scene
    good, bad = [], []
    for i, sample in enumerate(samples):
        image = render(sample.scene, size)
        good.append(score_image(image, sample.spec, sample.category)["passed"])
        for other in samples[i + 1:] + samples[:i]:
            exact = other.category == "counting"
            if other.category == sample.category and not satisfies(sample.scene, other.spec, exact_counts=exact):
                bad.append(score_image(image, other.spec, other.category)["passed"])
                break
    return _rates(good, bad)


def prompts_rates(n_per_category: int = 30, seed: int = 0, split: str = "test") -> dict[str, Rates]:
    """The ``prompts`` suite on ground truth, from each held-out prompt's point of view.

    ``judge``: the render of the prompt's true scene passes; the render of another same-category item's scene that
    does not satisfy the prompt fails. ``wording``: the prompt, read by ``parse_text``, states exactly the spec the
    judge checks; another same-category prompt with a different spec does not.
    """
    samples = heldout_prompts(n_per_category, seed, split)
    judge_good, judge_bad, words_good, words_bad = [], [], [], []
    for i, sample in enumerate(samples):
        judge_good.append(score_image(render_scene(sample.scene), sample.spec, sample.category)["passed"])
        words_good.append(parse_text(sample.prompt) == sample.spec)
        same_category = [o for o in samples[i + 1:] + samples[:i] if o.category == sample.category]
        exact = sample.category == "counting"
        wrong_scene = next((o for o in same_category if not satisfies(o.scene, sample.spec, exact_counts=exact)), None)
        if wrong_scene is not None:
            judge_bad.append(score_image(render_scene(wrong_scene.scene), sample.spec, sample.category)["passed"])
        wrong_words = next((o for o in same_category if o.spec != sample.spec), None)
        if wrong_words is not None:
            words_bad.append(parse_text(wrong_words.prompt) == sample.spec)
    return {"judge": _rates(judge_good, judge_bad), "wording": _rates(words_good, words_bad)}


def caption_rates(n_per_category: int = 30, seed: int = 0) -> Rates:
    """Caption judge on each scene's caption vs. the next caption describing different objects."""
    samples = shapes_prompts(n_per_category, seed, "test")
    good = [score_caption(s.caption, s.scene, s.category)["passed"] for s in samples]
    bad = []
    for i, sample in enumerate(samples):
        other = next(o for o in samples[i + 1:] + samples[:i] if o.scene.counts() != sample.scene.counts())
        bad.append(score_caption(other.caption, sample.scene, sample.category)["passed"])
    return _rates(good, bad)


def edit_rates(n_per_op: int = 30, seed: int = 0) -> Rates:
    """Edit judge on the true target vs. the unedited source and another edit's target."""
    rng = np.random.default_rng([seed, 808])
    samples = [sample_edit(rng, op, "test") for op in EDIT_OPS for _ in range(n_per_op)]
    good, bad = [], []
    for i, sample in enumerate(samples):
        source = render_scene(sample.source)
        good.append(score_edit(source, render_scene(sample.target), sample)["passed"])
        bad.append(score_edit(source, source, sample)["passed"])
        bad.append(score_edit(source, render_scene(samples[i - 1].target), sample)["passed"])
    return _rates(good, bad)


def speech_rates(classifier: KeywordClassifier, n_per_word: int = 10, seed: int = 0) -> Rates:
    """Keyword classifier on held-out voices: the clip's own word vs. the next keyword."""
    samples = speech_samples(n_per_word, seed, "test")
    heard = classifier.predict([s.waveform for s in samples])
    good = [h == s.text for h, s in zip(heard, samples)]
    bad = [h == KEYWORDS[(KEYWORDS.index(s.text) + 1) % len(KEYWORDS)] for h, s in zip(heard, samples)]
    return _rates(good, bad)


def melody_rates(n: int = 60, seed: int = 0, audio: bool = True) -> Rates:
    """Melody / chord judge (audio, or text when ``audio=False``) vs. another item's different text."""
    rng = np.random.default_rng([seed, 909])
    samples = [sample_chord(rng, "test") if i % 3 == 0 else sample_melody(rng, "test") for i in range(n)]
    good, bad = [], []
    for i, sample in enumerate(samples):
        other = next((o for o in samples[i + 1:] + samples[:i] if o.text != sample.text and o.kind == sample.kind),
                     None)  # small sets may hold one item of a kind (one chord when n < 6)
        if audio:
            good.append(score_music_audio(sample.waveform, sample.sample_rate, sample)["passed"])
            if other is not None:
                bad.append(score_music_audio(other.waveform, other.sample_rate, sample)["passed"])
        else:
            good.append(score_music_text(sample.text, sample))
            if other is not None:
                bad.append(score_music_text(other.text, sample))
    return _rates(good, bad)


def _meaning(doc) -> list:
    """What each check asks for, without incidental detail (object positions do not change a caption's truth)."""
    out = []
    for check in doc.checks:
        if check["kind"] == "caption":
            out.append(sorted((o["color"], o["shape"]) for o in check["scene"]["objects"]))
        elif check["kind"] != "text":
            out.append(check.get("word") or check.get("notes") or check.get("spec"))
    return out


def interleaved_rates(classifier: KeywordClassifier, n_per_kind: int = 10, seed: int = 0) -> Rates:
    """Completeness judge on each document's target vs. another same-kind target and a target missing a segment."""
    rng = np.random.default_rng([seed, 707])
    docs = [sample_document(rng, kind, "test") for kind in DOC_KINDS for _ in range(n_per_kind)]
    good, bad = [], []
    for i, doc in enumerate(docs):
        good.append(score_document(doc.target, doc.checks, classifier)["passed"])
        bad.append(score_document(doc.target[:-1], doc.checks, classifier)["passed"])
        other = next((o for o in docs[i + 1:] + docs[:i] if o.kind == doc.kind and _meaning(o) != _meaning(doc)), None)
        if other is not None:  # small sets may hold one meaning only (four held-out pairs in test)
            bad.append(score_document(other.target, doc.checks, classifier)["passed"])
    return _rates(good, bad)


def measure_all(n: int = 30, seed: int = 0, classifier: KeywordClassifier | None = None) -> dict[str, Rates]:
    """Every judge's rates; ``n`` items per category / operation (speech: ``n // 3`` per keyword)."""
    classifier = classifier or default_classifier()
    return {"shapes_64px": shapes_rates(n, seed), "shapes_32px": shapes_rates(n, seed, size=32),
            "shapes_64px_antialiased": shapes_rates(n, seed, antialias=True),
            "caption": caption_rates(n, seed), "edit": edit_rates(n, seed),
            "speech_keywords_heldout_voices": speech_rates(classifier, max(1, n // 3), seed),
            "melody_audio": melody_rates(2 * n, seed), "melody_text": melody_rates(2 * n, seed, audio=False),
            "interleaved": interleaved_rates(classifier, max(1, n // 3), seed),
            **{f"prompts_{split}_{part}": rates for split in ("validation", "test")
               for part, rates in prompts_rates(n, seed, split).items()}}


def main(argv: list[str] | None = None) -> int:
    """Print the rates of every judge as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = measure_all(args.n, args.seed)
    print(json.dumps({k: asdict(v) for k, v in rates.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
