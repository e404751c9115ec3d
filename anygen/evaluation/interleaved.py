"""Interleaved completeness: every requested segment is present, in order, in the right modality, and correct.

For a document's target checks ``c_1 ... c_n``, the output segments are walked in order: check ``c_i`` takes the
next unused output segment of its modality (text, image or audio). A check is *present* when such a segment
exists and *correct* when its content passes the check:

- ``text``: equal after normalising case and spaces;  ``caption``: :func:`anygen.evaluation.caption.score_caption`;
  ``notes``: the note names, in order;  ``spec`` (image): :func:`anygen.evaluation.shapes.score_image`;
- ``keyword`` (audio): the keyword classifier hears the word;  ``melody`` (audio): every note slot right.

A document passes when all its checks are present and correct. Segments can be anygen.types segments or anything
with a ``text`` / ``image`` / ``waveform`` + ``sample_rate`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from anygen.data.interleaved import Document
from anygen.data.language import Spec
from anygen.data.melody import MelodySample
from anygen.data.scenes import Scene
from anygen.evaluation.caption import score_caption
from anygen.evaluation.melody import score_music_audio, score_music_text
from anygen.evaluation.result import EvalResult, build_result
from anygen.evaluation.shapes import score_image
from anygen.evaluation.speech import KeywordClassifier, normalize_transcript


def segment_modality(segment: Any) -> str:
    """"text", "image", "audio" or "other" for a segment-like object."""
    if isinstance(segment, str) or hasattr(segment, "text"):
        return "text"
    if hasattr(segment, "image"):
        return "image"
    if hasattr(segment, "waveform"):
        return "audio"
    return "other"


def _text(segment: Any) -> str:
    return segment if isinstance(segment, str) else segment.text


def _melody(notes: list[str]) -> MelodySample:
    return MelodySample("melody", " ".join(notes), list(notes), "", torch.zeros(1))


def check_segment(segment: Any, check: dict, classifier: KeywordClassifier | None) -> bool:
    """Whether one output segment satisfies one check (see the module docstring)."""
    kind = check["kind"]
    if kind == "text":
        return normalize_transcript(_text(segment)) == normalize_transcript(check["text"])
    if kind == "caption":
        return score_caption(_text(segment), Scene.from_dict(check["scene"]), check["category"])["passed"]
    if kind == "notes":
        return score_music_text(_text(segment), _melody(check["notes"]))
    if kind == "spec":
        return score_image(segment.image, Spec.from_dict(check["spec"]), check["category"])["passed"]
    if kind == "melody":
        return score_music_audio(segment.waveform, segment.sample_rate, _melody(check["notes"]))["passed"]
    if kind == "keyword":
        if classifier is None:
            raise ValueError("a keyword check needs a KeywordClassifier (classifier=None was given)")
        return classifier.predict([segment.waveform], segment.sample_rate)[0] == check["word"]
    raise ValueError(f"unknown check kind {kind!r}")


def score_document(output: Sequence[Any], checks: Sequence[dict],
                   classifier: KeywordClassifier | None = None) -> dict[str, Any]:
    """Judge one generated segment list against a document's checks: ``{"passed", "present", "correct"}``."""
    used: set[int] = set()
    present, correct = [], []
    for check in checks:
        index = next((i for i, seg in enumerate(output)
                      if i not in used and segment_modality(seg) == check["modality"]
                      and all(i > j for j in used)), None)
        present.append(index is not None)
        if index is None:
            correct.append(False)
            continue
        used.add(index)
        correct.append(bool(check_segment(output[index], check, classifier)))
    return {"passed": all(correct), "present": present, "correct": correct}


def evaluate_interleaved(generate: Callable[[list], list], documents: Sequence[Document],
                         classifier: KeywordClassifier | None = None) -> EvalResult:
    """Call ``generate(prompt_segments) -> output_segments`` per document and score completeness / correctness."""
    details = []
    for doc in documents:
        verdict = score_document(generate(list(doc.prompt)), doc.checks, classifier)
        details.append({"kind": doc.kind, **verdict})
    checks = [flag for d in details for flag in d["present"]]
    right = [flag for d in details for flag in d["correct"]]
    metrics = {"segment_presence": sum(checks) / max(1, len(checks)),
               "segment_accuracy": sum(right) / max(1, len(right))}
    return build_result("interleaved", [d.kind for d in documents], [d["passed"] for d in details], details,
                        metrics)
