"""Edit pairs: a source scene, an instruction, and the target scene where only the named object changed.

Operations (:data:`EDIT_OPS`): ``recolor`` ("make the red circle blue"), ``move`` ("move the red circle to the
left"), ``add`` ("add a green star"), ``remove`` ("remove the red circle") and ``reshape`` ("turn the red circle
into a square"), each said in many phrasings (:mod:`anygen.data.instructions`). Every object in a source scene has
a distinct (colour, shape), so "the red circle" is unambiguous; objects the instruction does not name keep their
shape, colour, size and position exactly.

Example:
    >>> import numpy as np
    >>> from anygen.data.edits import sample_edit
    >>> edit = sample_edit(np.random.default_rng(0), "remove")
    >>> len(edit.target.objects) == len(edit.source.objects) - 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from anygen.data.instructions import EDIT_OPS, EditRequest, phrase_edit
from anygen.data.phrasing import wording_rng
from anygen.data.scenes import COLORS, SHAPES, Scene, overlaps, place_objects
from anygen.data.shapes import allowed_combo, check_split, pick_kinds
from anygen.errors import InvalidArgumentError

DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOVE_MIN, MOVE_MAX = 0.2, 0.35  # how far "move" shifts an object, fraction of the side


@dataclass
class EditSample:
    """One edit: ``instruction`` turns ``source`` into ``target``; ``params`` names what changed."""

    op: str
    source: Scene
    target: Scene
    instruction: str
    params: dict = field(default_factory=dict)


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _recolor(rng, objects, index, split):
    obj = objects[index]
    used = {(o.color, o.shape) for o in objects}
    options = [c for c in COLORS if (c, obj.shape) not in used and allowed_combo(c, obj.shape, split)]
    if not options:
        return None
    new = str(_pick(rng, options))
    return objects[:index] + [replace(obj, color=new)] + objects[index + 1:], new


def _reshape(rng, objects, index, split):
    obj = objects[index]
    used = {(o.color, o.shape) for o in objects}
    options = [s for s in SHAPES if (obj.color, s) not in used and allowed_combo(obj.color, s, split)]
    if not options:
        return None
    new = str(_pick(rng, options))
    return objects[:index] + [replace(obj, shape=new)] + objects[index + 1:], new


def _move(rng, objects, index, split):
    obj = objects[index]
    for name in rng.permutation(list(DIRECTIONS)):
        step = float(rng.uniform(MOVE_MIN, MOVE_MAX))
        ux, uy = DIRECTIONS[str(name)]
        moved = replace(obj, cx=round(obj.cx + ux * step, 4), cy=round(obj.cy + uy * step, 4))
        inside = all(0.02 <= v <= 0.98 for v in moved.bbox())
        others = objects[:index] + objects[index + 1:]
        if inside and not any(overlaps(moved, o) for o in others):
            phrase = "up" if name == "up" else "down" if name == "down" else f"to the {name}"
            return objects[:index] + [moved] + objects[index + 1:], phrase
    return None


def _add(rng, objects, index, split):
    used = {(o.color, o.shape) for o in objects}
    options = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in used and allowed_combo(c, s, split)]
    color, shape = _pick(rng, options)
    try:
        new_obj = place_objects(rng, [(color, shape)], others=objects)[0]
    except RuntimeError:
        return None
    return objects + [new_obj], f"{color} {shape}"


def _remove(rng, objects, index, split):
    return objects[:index] + objects[index + 1:], None


_OPS = {"recolor": _recolor, "move": _move, "add": _add, "remove": _remove, "reshape": _reshape}


def sample_edit(rng: np.random.Generator, op: str, split: str = "train", max_objects: int = 3) -> EditSample:
    """Draw one edit pair of operation ``op`` for ``split`` (deterministic in ``rng``)."""
    check_split(split)
    if op not in EDIT_OPS:
        raise InvalidArgumentError(f"op={op!r} must be one of {list(EDIT_OPS)}")
    while True:
        n = int(rng.integers(1 if op != "remove" else 2, max_objects + 1))
        kinds = pick_kinds(rng, n, split)
        try:
            objects = place_objects(rng, kinds)
        except RuntimeError:
            continue
        index = int(rng.integers(n))
        outcome = _OPS[op](rng, objects, index, split)
        if outcome is not None:
            break
    new_objects, new = outcome
    obj = objects[index]
    request = EditRequest(op, None, None, new) if op == "add" else EditRequest(op, obj.color, obj.shape, new)
    instruction = phrase_edit(wording_rng(rng), request)
    return EditSample(op, Scene(objects), Scene(new_objects), instruction, request.params())
