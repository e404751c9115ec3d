"""The ``prompts`` suite: free-text text-to-image in wordings that training never uses, scored by ShapesEval's judge.

It asks for the very scenes ShapesEval asks for (same seed, split and categories: single object, two objects,
counting, colours, position, colour attribution), each worded by :mod:`anygen.evaluation.prompt_phrasings`
("could you paint a circle which is red", "a scene with a square that has a star to its left, please"). A model
that learned the scene language rather than the training templates scores about as well here as on ShapesEval;
the gap between the two is what the wording costs. Validation split: seen colour-shape pairs; test split: every
scene holds a held-out pair.

Example:
    >>> from anygen.data.scenes import render_scene
    >>> suite = prompts_eval(n_per_category=2, seed=0)
    >>> truth = {s.prompt: s.scene for s in suite.samples}
    >>> suite.evaluate(lambda prompts: [render_scene(truth[p]) for p in prompts]).overall
    1.0
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from anygen.data.shapes import ShapeSample
from anygen.evaluation.prompt_phrasings import heldout_prompt
from anygen.evaluation.shapes import ShapesEval, shapes_prompts

PROMPTS_SEED_KEY = 4049  # keeps the wording stream apart from the scenes' streams


def heldout_prompts(n_per_category: int = 12, seed: int = 0, split: str = "test") -> list[ShapeSample]:
    """ShapesEval's samples for (``n_per_category``, ``seed``, ``split``), each prompt in a held-out wording."""
    rng = np.random.default_rng([seed, PROMPTS_SEED_KEY])
    return [replace(s, prompt=heldout_prompt(rng, s.spec, s.category))
            for s in shapes_prompts(n_per_category, seed, split)]


def prompts_eval(n_per_category: int = 12, seed: int = 0, split: str = "test") -> ShapesEval:
    """The suite: held-out prompts and the ShapesEval judge; its results are named "prompts"."""
    return ShapesEval(samples=heldout_prompts(n_per_category, seed, split), name="prompts")
