"""Rendering of coloured-shape scenes: glip_synth and the transfer experiment's new domain.

A scene is a noisy, low-contrast background with 1-4 filled shapes ("<colour> <shape>") at two
size ranges, placed with at most 0.25 IoU between any two. The dataset writers are
``datasets/prepare_glip_synth.py`` and ``datasets/prepare_glip_novel.py``; the vocabularies
live in :mod:`glip_d2.data.synthetic`.
"""

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import COLORS

__all__ = ["SIZES", "render_scene"]

SIZES = {"small": (34, 54), "large": (66, 96)}  # side length ranges in pixels


def _polygon(shape, cx, cy, r):
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.866, cy + r * 0.5), (cx - r * 0.866, cy + r * 0.5)]
    if shape == "star":
        pts = []
        for k in range(10):
            ang = -np.pi / 2 + k * np.pi / 5
            rad = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
        return pts
    if shape == "diamond":  # a rhombus, narrower than tall
        return [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)]
    if shape == "hexagon":  # flat top and bottom
        return [(cx + r * np.cos(k * np.pi / 3), cy + r * np.sin(k * np.pi / 3)) for k in range(6)]
    if shape == "cross":  # a plus sign, arms a third of the side wide
        a, b = r, r / 3
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b),
        ]  # fmt: skip
    raise ValueError(shape)


def _background(rng, height, width):
    """Low-contrast gradient + blotches + pixel noise, in greys/browns far from object colours."""
    base = rng.uniform(90, 190, size=3)
    tilt = rng.uniform(-25, 25, size=(2, 3))
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    coarse = rng.normal(0, 12, size=(height // 16 + 1, width // 16 + 1, 1))
    img = img + np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    img = img + rng.normal(0, 8, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(draw, shape, color, box):
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    else:
        s = x2 - x1
        pts = _polygon(shape, x1 + s / 2, y1 + s / 2, s / 2)
        draw.polygon(pts, fill=color)


def _shape_box(shape, x, y, s):
    """Tight integer xyxy (exclusive) box of a shape drawn in the square [x, x+s)."""
    if shape in ("circle", "square"):
        return [x, y, x + s, y + s]
    pts = np.array(_polygon(shape, x + s / 2, y + s / 2, s / 2))
    lo, hi = np.floor(pts.min(0)), np.ceil(pts.max(0))
    return [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])]


def _iou(a, b):
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def render_scene(
    rng, classes, must_include=(), height=256, width=256, max_objects=4, palette=COLORS
):
    """Render one scene.

    Args:
        rng (np.random.Generator): randomness source.
        classes (list[str]): "colour shape" names to draw from.
        must_include (list[str]): one of these is drawn first when given.
        palette (dict[str, tuple]): colour word -> RGB (jittered by +-15 per channel).

    Returns:
        (uint8 array (H, W, 3) RGB, list of dicts with "name", "size", "box" xyxy exclusive).
    """
    image = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(image)
    objects = []
    n = int(rng.integers(1, max_objects + 1))
    for k in range(n):
        pool = must_include if (k == 0 and must_include) else classes
        name = pool[int(rng.integers(len(pool)))]
        size = "small" if rng.random() < 0.4 else "large"
        for _ in range(20):  # a few placement tries; overlaps allowed up to IoU 0.25
            s = int(rng.integers(*SIZES[size]))
            x, y = int(rng.integers(0, width - s)), int(rng.integers(0, height - s))
            box = _shape_box(name.split()[1], x, y, s)
            if all(_iou(box, o["box"]) < 0.25 for o in objects):
                break
        else:
            continue
        colour, shape = name.split()
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(v) for v in np.clip(np.array(palette[colour]) + jitter, 0, 255))
        _draw(draw, shape, fill, box)
        objects.append({"name": name, "size": size, "box": box})
    return np.asarray(image), objects
