"""Caption accuracy (image -> text): the caption names the right objects, colours, counts and relation.

The caption is parsed with the corpus grammar (:func:`anygen.data.language.parse_text`, which ignores words it
does not know, so paraphrases work). It passes when (1) the (colour, shape) -> count multiset it names equals the
scene's exactly, (2) any relation it states holds between the named objects, and (3) for ``position`` scenes it
states a relation at all.

Example:
    >>> import numpy as np
    >>> from anygen.data.shapes import sample_shape_scene
    >>> from anygen.evaluation.caption import score_caption
    >>> s = sample_shape_scene(np.random.default_rng(0), "position")
    >>> score_caption(s.caption, s.scene, s.category)["passed"]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from anygen.data.language import Spec, parse_text, satisfies
from anygen.data.scenes import Scene, render_scene
from anygen.data.shapes import ShapeSample
from anygen.evaluation.result import EvalResult, build_result


def _named_counts(spec: Spec) -> dict[tuple[str | None, str], int]:
    counts: dict[tuple[str | None, str], int] = {}
    for req in spec.objects:
        counts[(req.color, req.shape)] = counts.get((req.color, req.shape), 0) + req.count
    return counts


def score_caption(caption: str, scene: Scene, category: str = "") -> dict[str, Any]:
    """Judge one caption against the scene it describes: ``{"passed", "objects_ok", "relation_ok", "parsed"}``."""
    spec = parse_text(caption)
    objects_ok = _named_counts(spec) == scene.counts()
    relation_ok = spec.relation is not None if category == "position" else True
    if spec.relation is not None and objects_ok:
        relation_ok = relation_ok and satisfies(scene, spec)
    return {"passed": bool(objects_ok and relation_ok), "objects_ok": bool(objects_ok),
            "relation_ok": bool(relation_ok), "parsed": spec.to_dict()}


def evaluate_captions(caption: Callable[[Image.Image], str], samples: Sequence[ShapeSample],
                      image_size: int = 64) -> EvalResult:
    """Render each sample's scene, call ``caption(image) -> str`` and score per GenEval category."""
    details, passed = [], []
    for sample in samples:
        text = caption(render_scene(sample.scene, image_size))
        verdict = score_caption(text, sample.scene, sample.category)
        details.append({"caption": text, "reference": sample.caption, "category": sample.category, **verdict})
        passed.append(verdict["passed"])
    return build_result("caption", [s.category for s in samples], passed, details)
