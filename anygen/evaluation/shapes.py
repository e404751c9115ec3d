"""ShapesEval: GenEval-style scoring of text-to-image on shape scenes, read from pixels.

Each prompt belongs to one of six categories (single object, two objects, counting, colours, position, colour
attribution). A generated image passes when the objects detected in it (see :mod:`anygen.evaluation.detect`)
satisfy the prompt: named shapes / colours present, exact count for ``counting``, the relation holding between
the objects' centres for ``position``. ``strict_overall`` additionally demands exact counts and no stray objects.
The prompts are the canonical sentences of :func:`anygen.data.language.describe` ("two red circles to the left of
a blue square"); the ``prompts`` suite (:mod:`anygen.evaluation.prompts`) asks for the same scenes in wordings
that training never uses.

Example:
    >>> from anygen.data.scenes import render_scene
    >>> from anygen.evaluation.shapes import ShapesEval
    >>> suite = ShapesEval(n_per_category=2, seed=0)
    >>> truth = {s.prompt: s.scene for s in suite.samples}
    >>> result = suite.evaluate(lambda prompts: [render_scene(truth[p]) for p in prompts])
    >>> result.overall
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from anygen.data.language import Spec, describe, satisfies
from anygen.data.shapes import CATEGORIES, ShapeSample, check_split, sample_shape_scene
from anygen.errors import check_range
from anygen.evaluation.detect import detect_objects
from anygen.evaluation.result import EvalResult, build_result, call_batched

ImageLike = Any  # PIL image, uint8 (H, W, 3) array or float (3, H, W) tensor in [0, 1]


def score_image(image: ImageLike, spec: Spec, category: str) -> dict[str, Any]:
    """Judge one image against one prompt's ``spec``: ``{"passed", "strict", "detected"}``."""
    found = detect_objects(image)
    passed = satisfies(found, spec, exact_counts=(category == "counting"))
    strict = satisfies(found, spec, exact_counts=True, no_extra=True)
    return {"passed": passed, "strict": strict, "detected": [(o.color, o.shape) for o in found.objects]}


def shapes_prompts(n_per_category: int = 12, seed: int = 0, split: str = "test") -> list[ShapeSample]:
    """``n_per_category`` prompts of each category (deterministic in ``seed``), with their reference scenes.

    Each prompt is the canonical sentence of its spec, so the suite measures the scenes, not the wording.
    """
    check_range("n_per_category", n_per_category, 1, None)
    check_split(split)
    samples = []
    for index, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, 7919, index])
        for _ in range(n_per_category):
            sample = sample_shape_scene(rng, category, split)
            samples.append(replace(sample, prompt=describe(sample.spec)))
    return samples


class ShapesEval:
    """The text-to-image suite: a fixed prompt set and a pixel judge.

    Args:
        n_per_category: prompts per GenEval category.
        seed: prompt-set seed.
        split: which split's scenes the prompts come from ("test" uses held-out colour/shape combinations).
        samples: use these prompts instead of drawing a set.
        name: the suite name its results carry ("prompts" when the samples hold held-out wordings).
    """

    def __init__(self, n_per_category: int = 12, seed: int = 0, split: str = "test",
                 samples: Sequence[ShapeSample] | None = None, name: str = "shapes") -> None:
        self.samples = list(samples) if samples is not None else shapes_prompts(n_per_category, seed, split)
        self.name = name

    def prompts(self) -> list[str]:
        """The prompt texts, in order."""
        return [s.prompt for s in self.samples]

    def score(self, images: Sequence[ImageLike], samples: Sequence[ShapeSample] | None = None) -> EvalResult:
        """Score ``images[i]`` against prompt ``samples[i]`` (default: this suite's samples)."""
        samples = list(self.samples if samples is None else samples)
        if len(images) != len(samples):
            raise ValueError(f"got {len(images)} images for {len(samples)} prompts")
        details = []
        for image, sample in zip(images, samples):
            verdict = score_image(image, sample.spec, sample.category)
            details.append({"prompt": sample.prompt, "category": sample.category, **verdict})
        strict = sum(d["strict"] for d in details) / max(1, len(details))
        return build_result(self.name, [s.category for s in samples], [d["passed"] for d in details], details,
                            {"strict_overall": strict})

    def evaluate(self, generate: Callable[[list[str]], list[Image.Image]], images_per_prompt: int = 1,
                 batch_size: int = 16) -> EvalResult:
        """Call ``generate(prompts) -> images`` (one image per prompt, batched) and score the images."""
        check_range("images_per_prompt", images_per_prompt, 1, None)
        samples = [s for s in self.samples for _ in range(images_per_prompt)]
        images = call_batched(generate, [s.prompt for s in samples], batch_size, "generate")
        return self.score(images, samples)


def evaluate_text_to_image(generate: Callable[[list[str]], list[Image.Image]], n_per_category: int = 12,
                           seed: int = 0, split: str = "test", images_per_prompt: int = 1) -> EvalResult:
    """Shortcut: ``ShapesEval(n_per_category, seed, split).evaluate(generate, images_per_prompt)``."""
    return ShapesEval(n_per_category, seed, split).evaluate(generate, images_per_prompt)
