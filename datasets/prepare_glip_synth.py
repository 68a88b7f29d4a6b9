#!/usr/bin/env python
"""Generate the glip_synth benchmark under $DETECTRON2_DATASETS/glip_synth (default datasets/).

Scenes of coloured shapes on noisy textured backgrounds, written as COCO detection json
(categories "red circle", ...) and MDETR-style grounding json (captions with exact char spans).
The vocabulary and held-out combinations come from ``glip_d2.data.synthetic``.

Splits:

* ``train`` / ``val``: only the *seen* colour-shape combinations.
* ``test_heldout``: every image holds at least one object of a *held-out* combination
  (``HELDOUT``), which never occurs in ``train`` or ``val``; its json lists all categories.

Layout under the root (``$DETECTRON2_DATASETS/glip_synth``)::

    images/{split}/{index:06d}.jpg      # JPEG quality 95
    annotations/instances_{split}.json     # COCO
    annotations/grounding_{split}.json     # MDETR format (train, val)
    meta.json                              # generator settings

A complete copy with the same settings (``meta.json``) is reused unless ``--force`` is given.
Run it as a script (``python datasets/prepare_glip_synth.py``) or, from the repository root,
import it (``from datasets.prepare_glip_synth import ensure_glip_synth``).
"""

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from glip_d2.data.synthetic import ALL_CLASSES, COLORS, DEFAULT_COUNTS, HELDOUT, SEEN_CLASSES

__all__ = ["generate_glip_synth", "ensure_glip_synth", "render_scene", "main"]

SIZES = {"small": (34, 54), "large": (66, 96)}  # side length ranges in pixels
VERSION = 1  # of the generator; a copy written by another version is regenerated
SPLIT_INDEX = {"train": 0, "val": 1, "test_heldout": 2}  # seeds the per-image generators


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


def render_scene(rng, classes, must_include=(), height=256, width=256, max_objects=4):
    """Render one scene.

    Args:
        rng (np.random.Generator): randomness source.
        classes (list[str]): "colour shape" names to draw from.
        must_include (list[str]): one of these is drawn first when given.

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
        fill = tuple(int(v) for v in np.clip(np.array(COLORS[colour]) + jitter, 0, 255))
        _draw(draw, shape, fill, box)
        objects.append({"name": name, "size": size, "box": box})
    return np.asarray(image), objects


def _relation(a, b):
    """Relation word of box a to box b when unambiguous (disjoint along one axis), else None."""
    if a[2] <= b[0]:
        return "left of"
    if a[0] >= b[2]:
        return "right of"
    if a[3] <= b[1]:
        return "above"
    if a[1] >= b[3]:
        return "below"
    return None


def _captions(rng, objects):
    """MDETR-style captions: one describing the scene, one relational when possible.

    Returns a list of (caption, [(object index, [start, end)) per phrase]).
    """
    out = []
    caption, phrases = "", []
    for i, o in enumerate(objects):
        caption += "a " if i == 0 else (" and a " if i == len(objects) - 1 else ", a ")
        start = len(caption)
        caption += f"{o['size']} {o['name']}"
        phrases.append((i, [start, len(caption)]))
    out.append((caption + ".", phrases))

    counts = {}
    for o in objects:
        counts[o["name"]] = counts.get(o["name"], 0) + 1
    pairs = [
        (i, j)
        for i in range(len(objects))
        for j in range(len(objects))
        if i != j
        and counts[objects[j]["name"]] == 1
        and _relation(objects[i]["box"], objects[j]["box"])
    ]
    if pairs:
        i, j = pairs[int(rng.integers(len(pairs)))]
        rel = _relation(objects[i]["box"], objects[j]["box"])
        target = f"the {objects[i]['size']} {objects[i]['name']}"
        anchor = f"a {objects[j]['name']}"
        caption = f"{target} {rel} {anchor}"
        a0 = len(target) + len(rel) + 2
        out.append((caption, [(i, [0, len(target)]), (j, [a0, a0 + len(anchor)])]))
    return out


def _class_id(name):
    return ALL_CLASSES.index(name) + 1


def generate_split(root, split, num_images, seed=0, height=256, width=256):
    """Render one split and write its images and json files. Returns the COCO dict."""
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    heldout_names = [f"{c} {s}" for c, s in HELDOUT]
    classes = ALL_CLASSES if split == "test_heldout" else SEEN_CLASSES
    must = heldout_names if split == "test_heldout" else ()
    coco = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": _class_id(n), "name": n} for n in classes]
    grounding = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for idx in range(num_images):
        rng = np.random.default_rng([seed, SPLIT_INDEX[split], idx])
        pixels, objects = render_scene(rng, classes, must, height, width)
        file_name = f"{idx:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), quality=95)
        image_id = idx + 1
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": _class_id(o["name"]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for sent, (caption, phrases) in enumerate(_captions(rng, objects)):
            entry_id = len(grounding["images"]) + 1
            grounding["images"].append(
                {
                    "id": entry_id,
                    "file_name": file_name,
                    "height": height,
                    "width": width,
                    "caption": caption,
                    "original_img_id": image_id,
                    "sentence_id": sent,
                    "tokens_positive_eval": [[span] for _, span in phrases],
                    "phrase_ids": list(range(len(phrases))),
                }
            )
            for pid, (obj, span) in enumerate(phrases):
                x1, y1, x2, y2 = objects[obj]["box"]
                grounding["annotations"].append(
                    {
                        "id": len(grounding["annotations"]) + 1,
                        "image_id": entry_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "tokens_positive": [span],
                        "phrase_ids": pid,
                    }
                )
    ann_dir = os.path.join(root, "annotations")
    with open(os.path.join(ann_dir, f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)
    if split != "test_heldout":
        with open(os.path.join(ann_dir, f"grounding_{split}.json"), "w") as f:
            json.dump(grounding, f)
    return coco


def generate_glip_synth(root, counts=None, seed=0, height=256, width=256):
    """Write every split under ``root``; ``counts`` maps split -> number of images."""
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    for split in ("train", "val", "test_heldout"):
        generate_split(root, split, counts[split], seed, height, width)
    meta = {
        "version": VERSION,
        "seed": seed,
        "counts": counts,
        "size_hw": [height, width],
        "classes": ALL_CLASSES,
        "heldout": [" ".join(p) for p in HELDOUT],
    }
    # meta.json last: its presence marks a complete dataset for ensure_glip_synth.
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def ensure_glip_synth(root=None, counts=None, seed=0):
    """Generate glip_synth under ``root`` unless a complete copy with the same settings exists.

    ``root`` defaults to ``$DETECTRON2_DATASETS/glip_synth`` (``datasets/glip_synth``).
    Returns the root path.
    """
    if root is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_synth")
    meta_file = os.path.join(root, "meta.json")
    wanted = dict(DEFAULT_COUNTS, **(counts or {}))
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if (
            meta.get("version") == VERSION
            and meta.get("seed") == seed
            and meta.get("counts") == wanted
        ):
            return root
    os.makedirs(root, exist_ok=True)
    generate_glip_synth(root, wanted, seed)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    default_root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_synth")
    parser.add_argument("--root", default=default_root, help=f"output folder ({default_root})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite a complete copy too")
    for split, n in DEFAULT_COUNTS.items():
        parser.add_argument(f"--num-{split.replace('_', '-')}", type=int, default=n)
    args = parser.parse_args(argv)
    counts = {s: getattr(args, f"num_{s}") for s in DEFAULT_COUNTS}
    for split, n in counts.items():
        if n < 1:
            parser.error(f"--num-{split.replace('_', '-')} must be >= 1, got {n}")
    if args.force:
        os.makedirs(args.root, exist_ok=True)
        generate_glip_synth(args.root, counts, args.seed)
    else:
        ensure_glip_synth(args.root, counts, args.seed)
    print(f"glip_synth in {args.root}: {counts}")
    print("held-out colour-shape combinations:", ", ".join(" ".join(p) for p in HELDOUT))


if __name__ == "__main__":
    main()
