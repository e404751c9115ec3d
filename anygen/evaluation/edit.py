"""Edit accuracy: the instruction was applied and everything else was preserved, read from pixels.

What is expected comes from the instruction itself, read by :func:`anygen.data.instructions.parse_edit` (any of
its phrasings: "make the red circle blue", "take away the blue square", ...) and applied to the source scene.
Objects are detected in the source image and in the edited image (:mod:`anygen.evaluation.detect`). An edit passes
when (1) the edited image holds exactly the expected (colour, shape) multiset, (2) every object the instruction
does not name sits where it was (centre within ``POSITION_TOL`` of the side), and (3) for ``move`` the named object
moved at least ``MOVE_MIN_SHIFT`` in the asked direction and less than ``POSITION_TOL`` across it. ``recolor`` and
``reshape`` also keep the object in place; ``add`` accepts the new object anywhere.

Example:
    >>> import numpy as np
    >>> from anygen.data.edits import sample_edit
    >>> from anygen.data.scenes import render_scene
    >>> from anygen.evaluation.edit import score_edit
    >>> e = sample_edit(np.random.default_rng(0), "move")
    >>> score_edit(render_scene(e.source), render_scene(e.target), e)["passed"]
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from anygen.data.edits import DIRECTIONS, EditSample
from anygen.data.instructions import EditRequest, apply_edit, parse_edit
from anygen.data.language import scene_spec
from anygen.data.scenes import Scene, ShapeObject, render_scene
from anygen.evaluation.detect import detect_objects
from anygen.evaluation.result import EvalResult, build_result

POSITION_TOL = 0.06  # allowed drift of an untouched object's centre, fraction of the side (about 4 px at 64 px)
MOVE_MIN_SHIFT = 0.1  # a moved object must travel at least this far in the asked direction


def _by_kind(scene: Scene) -> dict[tuple[str, str], ShapeObject]:
    return {(o.color, o.shape): o for o in scene.objects}


def _near(a: ShapeObject, b: ShapeObject) -> bool:
    return abs(a.cx - b.cx) <= POSITION_TOL and abs(a.cy - b.cy) <= POSITION_TOL


def expected_kinds(source: Scene, request: EditRequest) -> Counter:
    """The (colour, shape) multiset the edited scene must hold: ``source`` with ``request`` applied
    (:func:`~anygen.data.instructions.apply_edit`)."""
    return Counter({(o.color, o.shape): o.count for o in apply_edit(scene_spec(source), request).objects})


def _moved_enough(before: ShapeObject, after: ShapeObject, direction: str) -> bool:
    ux, uy = DIRECTIONS[direction]
    dx, dy = after.cx - before.cx, after.cy - before.cy
    along, across = dx * ux + dy * uy, abs(dx * uy) + abs(dy * ux)
    return along >= MOVE_MIN_SHIFT and across <= POSITION_TOL


def _positions_ok(request: EditRequest, before: Scene, after: Scene) -> bool:
    found_before, found_after = _by_kind(before), _by_kind(after)
    named = (request.color, request.shape)
    for kind, obj in found_before.items():
        if kind == named:
            continue
        if kind not in found_after or not _near(obj, found_after[kind]):
            return False
    if request.op in ("add", "remove"):
        return True
    if named not in found_before:
        return False
    if request.op == "move":
        return named in found_after and _moved_enough(found_before[named], found_after[named], request.new.split()[-1])
    new_kind = (request.new, named[1]) if request.op == "recolor" else (named[0], request.new)
    return new_kind in found_after and _near(found_before[named], found_after[new_kind])


def score_edit(source: Image.Image, edited: Image.Image, sample: EditSample) -> dict[str, Any]:
    """Judge one edited image against ``sample.instruction`` applied to ``sample.source``.

    Returns ``{"passed", "kinds_ok", "positions_ok", "detected"}``.
    """
    request = parse_edit(sample.instruction)
    before, after = detect_objects(source), detect_objects(edited)
    kinds_ok = Counter((o.color, o.shape) for o in after.objects) == expected_kinds(sample.source, request)
    positions_ok = kinds_ok and len(before.objects) == len(sample.source.objects) and _positions_ok(
        request, before, after)
    return {"passed": bool(kinds_ok and positions_ok), "kinds_ok": bool(kinds_ok),
            "positions_ok": bool(positions_ok), "detected": [(o.color, o.shape) for o in after.objects]}


def evaluate_edits(edit: Callable[[Image.Image, str], Image.Image], samples: Sequence[EditSample],
                   image_size: int = 64) -> EvalResult:
    """Render each sample's source, call ``edit(image, instruction)`` and score the result per operation."""
    details, passed = [], []
    for sample in samples:
        source = render_scene(sample.source, image_size)
        verdict = score_edit(source, edit(source, sample.instruction), sample)
        details.append({"instruction": sample.instruction, "op": sample.op, **verdict})
        passed.append(verdict["passed"])
    return build_result("edit", [s.op for s in samples], passed, details)
