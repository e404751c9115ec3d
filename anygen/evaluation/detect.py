"""Read a shape scene back from pixels, with no learned detector.

Steps: (1) every pixel takes the nearest palette colour or the background; (2) connected components of each colour
(``scipy.ndimage.label``) are found; (3) a component is kept only if its core (the mask opened by a 3x3 square,
for images of 48 px and more) covers a minimum area, so anti-aliased fringes and speckles vanish while thin star
arms still count toward the shape; (4) each component's shape comes from
its geometry: solidity (area / convex-hull area) below 0.75 is a star, otherwise the extent (area / bounding-box
area) separates squares (> 0.88), circles and triangles (< 0.65).

Example:
    >>> from anygen.data.scenes import Scene, ShapeObject, render_scene
    >>> from anygen.evaluation.detect import detect_objects
    >>> found = detect_objects(render_scene(Scene([ShapeObject("star", "blue", 0.5, 0.5, 0.15)])))
    >>> [(o.color, o.shape) for o in found.objects]
    [('blue', 'star')]
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from anygen.data.scenes import BACKGROUND, COLORS, Scene, ShapeObject
from anygen.errors import MediaError

MIN_AREA_FRACTION = 0.004  # components smaller than this fraction of the image are noise (16 px at 64 px)
STAR_SOLIDITY, SQUARE_EXTENT, TRIANGLE_EXTENT = 0.75, 0.88, 0.65


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image, uint8 (H, W, 3) or float (3, H, W) in [0, 1] (tensor or array) -> uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = np.transpose(array, (1, 2, 0))
    if array.ndim != 3 or array.shape[-1] != 3:
        raise MediaError(f"image must be a PIL image or shaped (H, W, 3) / (3, H, W), got {array.shape}")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise MediaError("image contains NaN or Inf values")
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return array


def quantize(rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest colour per pixel: 0 = background, k = k-th palette colour (order of COLORS)."""
    palette = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # (K+1, 3)
    dist = ((rgb[:, :, None, :].astype(np.float32) - palette[None, None]) ** 2).sum(-1)  # (H, W, K+1)
    return dist.argmin(-1)


def classify_shape(mask: np.ndarray) -> str:
    """Shape name of one filled component (boolean mask cropped or not)."""
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    extent = area / float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        solidity = area / ConvexHull(corners).volume  # in 2-D, volume is the area
    except QhullError:
        solidity = 1.0
    if solidity < STAR_SOLIDITY:
        return "star"
    if extent > SQUARE_EXTENT:
        return "square"
    return "triangle" if extent < TRIANGLE_EXTENT else "circle"


def detect_objects(image: Image.Image | np.ndarray) -> Scene:
    """Objects visible in ``image`` as a :class:`Scene`.

    Centres are bounding-box centres (the renderer's ``cx, cy`` for every shape) and half-sizes half the larger
    bounding-box side, both normalised by the image side.
    """
    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    labels = quantize(rgb)
    min_area = max(4, int(MIN_AREA_FRACTION * height * width))
    objects = []
    for index, color in enumerate(COLORS, start=1):
        mask = labels == index
        core = mask
        if min(height, width) >= 48:
            core = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
        components, n = ndimage.label(mask)
        for k in range(1, n + 1):
            component = components == k
            if core[component].sum() < min_area:  # thin fringes and speckles have no core
                continue
            ys, xs = np.nonzero(component)
            size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 2.0
            cx, cy = (xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0  # bounding-box centre
            objects.append(ShapeObject(classify_shape(component), color, float(cx / width), float(cy / height),
                                       float(min(size / max(height, width), 0.5))))
    return Scene(objects)
