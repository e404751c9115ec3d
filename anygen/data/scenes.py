"""Shape scenes: a small palette of colours and shapes, a scene model in normalised coordinates, and a renderer.

A :class:`Scene` is a list of :class:`ShapeObject` (shape, colour, centre and half-size as fractions of the image
side) on a white background. Rendering is crisp (no anti-aliasing) so every object pixel carries an exact palette
colour; the evaluators read scenes back from pixels with the same palette.

Example:
    >>> import numpy as np
    >>> from anygen.data.scenes import ShapeObject, Scene, render_scene
    >>> scene = Scene([ShapeObject("circle", "red", 0.5, 0.5, 0.15)])
    >>> render_scene(scene, 64).size
    (64, 64)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from anygen.errors import InvalidArgumentError, check_range

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 210, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 50, 180),
    "pink": (250, 120, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
MIN_SIZE, MAX_SIZE = 0.11, 0.17  # half-size range, fraction of the image side (7-11 px at 64 px)
GAP = 0.05  # minimum free space between two objects' bounding boxes


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape. ``cx, cy`` is the centre and ``size`` the half-extent, all as fractions of the side."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InvalidArgumentError(f"shape={self.shape!r} must be one of {list(SHAPES)}")
        if self.color not in COLORS:
            raise InvalidArgumentError(f"color={self.color!r} must be one of {list(COLORS)}")
        check_range("size", self.size, 0.0, 0.5, low_inclusive=False)

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in normalised coordinates."""
        return self.cx - self.size, self.cy - self.size, self.cx + self.size, self.cy + self.size


@dataclass
class Scene:
    """A list of shapes on a white background."""

    objects: list[ShapeObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly form (round-trips through :meth:`from_dict`)."""
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of :meth:`to_dict`."""
        return cls([ShapeObject(**o) for o in data["objects"]])

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of objects per (colour, shape)."""
        out: dict[tuple[str, str], int] = {}
        for obj in self.objects:
            out[(obj.color, obj.shape)] = out.get((obj.color, obj.shape), 0) + 1
        return out


def _polygon(obj: ShapeObject, side: int) -> list[tuple[float, float]]:
    cx, cy, r = obj.cx * side, obj.cy * side, obj.size * side
    if obj.shape == "triangle":  # upright, apex at the top, filling its bounding box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    points = []  # five-pointed star, outer radius r, inner radius 0.45 r, first point up
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, side: int) -> None:
    """Draw one filled object on ``draw`` for an image of ``side`` pixels."""
    x0, y0, x1, y1 = (v * side for v in obj.bbox())
    color = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    else:
        draw.polygon(_polygon(obj, side), fill=color)


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` x ``size`` pixels (crisp palette colours, white background)."""
    check_range("size", size, 16, 1024)
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj, size)
    return image


def overlaps(a: ShapeObject, b: ShapeObject, gap: float = GAP) -> bool:
    """True when the bounding boxes of ``a`` and ``b`` are closer than ``gap``."""
    ax0, ay0, ax1, ay1 = a.bbox()
    bx0, by0, bx1, by1 = b.bbox()
    return not (ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0)


def random_object(rng: np.random.Generator, shape: str, color: str,
                  region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> ShapeObject:
    """An object of random size whose bounding box lies inside ``region`` (x0, y0, x1, y1) and the image."""
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    margin = size + 0.03
    x0, y0 = max(region[0], 0.0) + margin, max(region[1], 0.0) + margin
    x1, y1 = min(region[2], 1.0) - margin, min(region[3], 1.0) - margin
    if x0 > x1 or y0 > y1:
        raise InvalidArgumentError(f"region={region} is too small for an object of half-size {size:.2f}")
    return ShapeObject(shape, color, round(float(rng.uniform(x0, x1)), 4), round(float(rng.uniform(y0, y1)), 4),
                       round(size, 4))


def place_objects(rng: np.random.Generator, kinds: list[tuple[str, str]], others: list[ShapeObject] | None = None,
                  tries: int = 200) -> list[ShapeObject]:
    """Place one object per (colour, shape) in ``kinds`` without overlapping each other or ``others``."""
    placed: list[ShapeObject] = list(others or [])
    start = len(placed)
    for color, shape in kinds:
        for _ in range(tries):
            candidate = random_object(rng, shape, color)
            if not any(overlaps(candidate, other) for other in placed):
                placed.append(candidate)
                break
        else:
            raise RuntimeError(f"could not place {len(kinds)} objects without overlap in {tries} tries")
    return placed[start:]
