"""Image judges validated on ground truth: correct pairs pass (>= 97%), mismatched pairs fail (<= 3%)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dataclasses import replace

from anygen.data.edits import sample_edit
from anygen.data.scenes import Scene, ShapeObject, render_scene
from anygen.errors import InvalidArgumentError, MediaError
from anygen.evaluation.caption import score_caption
from anygen.evaluation.detect import detect_objects, to_rgb_array
from anygen.evaluation.edit import evaluate_edits, score_edit
from anygen.evaluation.shapes import ShapesEval
from anygen.evaluation.suites import run_suite
from anygen.evaluation.validation import caption_rates, edit_rates, prompts_rates, shapes_rates


@pytest.mark.parametrize("size,antialias", [(64, False), (32, False), (64, True)])
def test_shapes_eval_on_ground_truth(size, antialias):
    rates = shapes_rates(n_per_category=25, seed=1, size=size, antialias=antialias)
    assert rates.n_correct == 150 and rates.n_mismatched == 150
    assert rates.correct >= 0.97 and rates.mismatched <= 0.03


def test_caption_judge_on_ground_truth():
    rates = caption_rates(n_per_category=25, seed=1)
    assert rates.correct >= 0.97 and rates.mismatched <= 0.03


def test_edit_judge_on_ground_truth():
    rates = edit_rates(n_per_op=12, seed=1)
    assert rates.n_mismatched == 120 and rates.correct >= 0.97 and rates.mismatched <= 0.03


def test_shapes_eval_end_to_end_and_failure_modes():
    suite = ShapesEval(n_per_category=3, seed=2)
    truth = {s.prompt: s.scene for s in suite.samples}
    perfect = suite.evaluate(lambda prompts: [render_scene(truth[p]) for p in prompts], batch_size=5)
    assert perfect.overall == 1.0 and perfect.n == 18 and perfect.metrics["strict_overall"] == 1.0
    blank = suite.evaluate(lambda prompts: [Image.new("RGB", (64, 64), "white") for _ in prompts])
    assert blank.overall == 0.0 and set(blank.per_category) == set(perfect.per_category)
    json.loads(perfect.to_json())
    with pytest.raises(InvalidArgumentError, match="outputs"):
        suite.evaluate(lambda prompts: [])


def test_detector_accepts_tensors_and_rejects_garbage():
    image = render_scene(Scene([ShapeObject("triangle", "green", 0.3, 0.6, 0.15)]))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    assert [(o.color, o.shape) for o in detect_objects(tensor).objects] == [("green", "triangle")]
    with pytest.raises(MediaError):
        to_rgb_array(np.zeros((4, 4)))
    with pytest.raises(MediaError, match="NaN"):
        to_rgb_array(np.full((3, 8, 8), np.nan))


def test_caption_judge_reads_paraphrases_and_catches_errors():
    scene = Scene([ShapeObject("circle", "red", 0.25, 0.5, 0.12), ShapeObject("square", "blue", 0.75, 0.5, 0.12)])
    assert score_caption("A red circle to the left of a blue square.", scene, "position")["passed"]
    assert not score_caption("a red circle to the right of a blue square", scene, "position")["passed"]
    assert not score_caption("a red circle and a blue square", scene, "position")["passed"]  # relation missing
    assert not score_caption("a red circle", scene)["passed"]


def test_edit_evaluator_with_a_do_nothing_model():
    rng = np.random.default_rng(4)
    samples = [sample_edit(rng, op, "test") for op in ("recolor", "move", "remove")]
    result = evaluate_edits(lambda image, instruction: image, samples)
    assert result.overall == 0.0 and set(result.per_category) == {"recolor", "move", "remove"}
    moved_too_little = samples[1]
    target = moved_too_little.target
    half = Scene([o if o in moved_too_little.source.objects else
                  next(s for s in moved_too_little.source.objects if (s.color, s.shape) == (o.color, o.shape))
                  for o in target.objects])
    assert not score_edit(render_scene(moved_too_little.source), render_scene(half), moved_too_little)["passed"]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_prompts_suite_on_ground_truth(split):
    rates = prompts_rates(n_per_category=15, seed=1, split=split)
    judge, wording = rates["judge"], rates["wording"]
    assert judge.n_correct == 90 and judge.n_mismatched >= 85
    assert judge.correct >= 0.97 and judge.mismatched <= 0.03
    assert wording.correct == 1.0 and wording.mismatched == 0.0


def test_prompts_suite_asks_shapes_eval_scenes_in_other_words():
    shapes, prompts = run_suite("shapes", n=2, seed=3)[0], run_suite("prompts", n=2, seed=3)[0]
    assert prompts.suite == "prompts" and prompts.overall == 1.0 and prompts.n == shapes.n == 12
    asked = [d["prompt"] for d in prompts.details]
    assert not set(asked) & {d["prompt"] for d in shapes.details}
    assert [d["category"] for d in prompts.details] == [d["category"] for d in shapes.details]


def test_edit_judge_reads_the_instruction():
    edit = sample_edit(np.random.default_rng(7), "recolor", "test")
    source, target = render_scene(edit.source), render_scene(edit.target)
    color, shape, new = edit.params["color"], edit.params["shape"], edit.params["new"]
    reworded = replace(edit, instruction=f"could you give the {shape} that is {color} a {new} colour")
    assert score_edit(source, target, reworded)["passed"]
    other = next(c for c in ("red", "yellow", "green", "blue", "purple", "pink") if c not in (color, new))
    assert not score_edit(source, target, replace(edit, instruction=f"make the {color} {shape} {other}"))["passed"]
