"""What ``anygen run`` asks of a model: a fixed list, written before anygen-tiny v5 was trained.

These requests were chosen to cover every task and every ShapesEval category in the words a user would type, not
from what any model gets right, and they are not to be changed to suit a model. The showcase draws every sample
of every request, shows all of them, and judges each with the evaluators (``anygen.evaluation``), so the pass
rate printed beside a task is the rate of exactly the samples on the page.
"""

from __future__ import annotations

from anygen.data.scenes import Scene, ShapeObject

# (ShapesEval category, prompt): two per category; colours and shapes from the model's vocabulary.
IMAGE_PROMPTS: tuple[tuple[str, str], ...] = (
    ("single_object", "a red circle"),
    ("single_object", "draw a blue square"),
    ("two_object", "a green triangle and a pink star"),
    ("two_object", "a blue circle and a red square"),
    ("counting", "two circles"),
    ("counting", "three red squares"),
    ("colors", "a purple square"),
    ("colors", "show me a pink circle"),
    ("position", "a red circle to the left of a blue square"),
    ("position", "a green square above a yellow triangle"),
    ("color_attr", "a blue star and a red triangle"),
    ("color_attr", "a yellow circle and a green square"),
)
IMAGES_PER_PROMPT = 2


def _obj(shape: str, color: str, cx: float, cy: float) -> ShapeObject:
    return ShapeObject(shape, color, cx, cy, 0.14)


# (source scene, instruction, scene the instruction asks for): one per edit operation.
EDITS: tuple[tuple[Scene, str, Scene], ...] = (
    (Scene([_obj("square", "blue", 0.5, 0.5)]), "make the square red", Scene([_obj("square", "red", 0.5, 0.5)])),
    (Scene([_obj("circle", "green", 0.7, 0.5)]), "move the circle to the left",
     Scene([_obj("circle", "green", 0.3, 0.5)])),
    (Scene([_obj("triangle", "red", 0.3, 0.5)]), "add a blue star",
     Scene([_obj("triangle", "red", 0.3, 0.5), _obj("star", "blue", 0.7, 0.5)])),
    (Scene([_obj("circle", "red", 0.3, 0.5), _obj("square", "blue", 0.7, 0.5)]), "remove the circle",
     Scene([_obj("square", "blue", 0.7, 0.5)])),
    (Scene([_obj("circle", "pink", 0.5, 0.5)]), "turn the circle into a square",
     Scene([_obj("square", "pink", 0.5, 0.5)])),
)

# (category, scene) to caption.
CAPTION_SCENES: tuple[tuple[str, Scene], ...] = (
    ("single_object", Scene([_obj("star", "yellow", 0.5, 0.5)])),
    ("counting", Scene([_obj("circle", "blue", 0.25, 0.3), _obj("circle", "blue", 0.75, 0.3),
                        _obj("circle", "blue", 0.5, 0.75)])),
    ("two_object", Scene([_obj("square", "red", 0.3, 0.5), _obj("triangle", "green", 0.7, 0.5)])),
    ("position", Scene([_obj("circle", "purple", 0.5, 0.25), _obj("square", "pink", 0.5, 0.75)])),
)

# Spoken keywords (words the speech judge knows), and melodies / chords in the corpus' note names.
SPEECH: tuple[str, ...] = ("seven", "green", "stop", "yes")
MUSIC: tuple[str, ...] = ("C4 E4 G4 C5", "E4 D4 C4 D4 E4", "C major chord", "A minor chord")
# Interleaved documents: the first ``INTERLEAVED_PER_KIND`` documents of each kind drawn with this seed from the
# validation split.
INTERLEAVED_SEED = 2026
INTERLEAVED_PER_KIND = 1
