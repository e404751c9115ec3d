"""Automatic evaluators that need no pretrained detector, each validated on ground truth (docs/evaluation.md).

Example:
    >>> from anygen.evaluation import run_suite
    >>> [r.overall for r in run_suite("caption", n=2)]  # ground truth scores 1.0
    [1.0]
"""

from __future__ import annotations

from anygen.evaluation.caption import evaluate_captions, score_caption
from anygen.evaluation.edit import evaluate_edits, score_edit
from anygen.evaluation.interleaved import evaluate_interleaved, score_document
from anygen.evaluation.melody import evaluate_melody_to_text, evaluate_text_to_melody
from anygen.evaluation.prompts import heldout_prompts, prompts_eval
from anygen.evaluation.result import EvalResult
from anygen.evaluation.shapes import ShapesEval, evaluate_text_to_image, score_image
from anygen.evaluation.speech import (
                                      KeywordClassifier,
                                      default_classifier,
                                      evaluate_speech_to_text,
                                      evaluate_text_to_speech,
)
from anygen.evaluation.suites import SUITES, ModelCallables, run_suite

__all__ = ["SUITES", "EvalResult", "KeywordClassifier", "ModelCallables", "ShapesEval", "default_classifier",
           "evaluate_captions", "evaluate_edits", "evaluate_interleaved", "evaluate_melody_to_text",
           "evaluate_speech_to_text", "evaluate_text_to_image", "evaluate_text_to_melody", "evaluate_text_to_speech",
           "heldout_prompts", "prompts_eval", "run_suite", "score_caption", "score_document", "score_edit",
           "score_image"]
