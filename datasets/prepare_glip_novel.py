#!/usr/bin/env python
"""Generate glip_novel, the transfer experiment's new domain, under
$DETECTRON2_DATASETS/glip_novel (default datasets/).

Scenes rendered like glip_synth's (same backgrounds, sizes and placement) but of colours and
shapes glip_synth never shows: orange / pink / cyan x diamond / hexagon / cross
(``glip_d2.data.synthetic.NOVEL_CLASSES``, 9 categories, every combination in both splits).
``demo/transfer.py`` fine-tunes the main job's model on k-shot subsets of ``train`` and
evaluates on ``val``.

Layout under the root::

    images/{train,val}/{index:06d}.jpg      # JPEG quality 95
    annotations/instances_{train,val}.json  # COCO detection
    meta.json                               # generator settings; written last

A complete copy with the same settings is reused unless ``--force`` is given.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

from glip_d2.data.shapes import render_scene
from glip_d2.data.synthetic import NOVEL_CLASSES, NOVEL_COLORS, NOVEL_COUNTS

__all__ = ["ensure_glip_novel", "main"]

VERSION = 1  # of the generator; a copy written by another version is regenerated
# Seeds the per-image rngs next to the split index; glip_synth's splits use 0-3.
SPLIT_INDEX = {"train": 10, "val": 11}


def generate_split(root, split, num_images, seed=0, height=256, width=256):
    """Render one split; writes its images and ``annotations/instances_{split}.json``."""
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NOVEL_CLASSES)],
    }
    for idx in range(num_images):
        rng = np.random.default_rng([seed, SPLIT_INDEX[split], idx])
        pixels, objects = render_scene(rng, NOVEL_CLASSES, (), height, width, palette=NOVEL_COLORS)
        file_name = f"{idx:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), quality=95)
        coco["images"].append(
            {"id": idx + 1, "file_name": file_name, "height": height, "width": width}
        )
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": idx + 1,
                    "category_id": NOVEL_CLASSES.index(o["name"]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)
    return coco


def ensure_glip_novel(root=None, counts=None, seed=0, force=False):
    """Generate glip_novel under ``root`` (default ``$DETECTRON2_DATASETS/glip_novel``) unless
    a complete copy with the same settings exists (or ``force``). Returns the root."""
    if root is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_novel")
    counts = dict(NOVEL_COUNTS, **(counts or {}))
    meta = {"version": VERSION, "seed": seed, "counts": counts, "classes": NOVEL_CLASSES}
    meta_file = os.path.join(root, "meta.json")
    if not force and os.path.isfile(meta_file):
        with open(meta_file) as f:
            if json.load(f) == meta:
                return root
        os.remove(meta_file)  # incomplete until every split is rewritten
    for split, n in counts.items():
        generate_split(root, split, n, seed)
    with open(meta_file, "w") as f:  # last: its presence marks a complete copy
        json.dump(meta, f, indent=1)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_novel")
    parser.add_argument("--root", default=default_root, help=f"output folder ({default_root})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite a complete copy too")
    for split, n in NOVEL_COUNTS.items():
        parser.add_argument(f"--num-{split}", type=int, default=n)
    args = parser.parse_args(argv)
    counts = {s: getattr(args, f"num_{s}") for s in NOVEL_COUNTS}
    for split, n in counts.items():
        if n < 1:
            parser.error(f"--num-{split} must be >= 1, got {n}")
    ensure_glip_novel(args.root, counts, args.seed, args.force)
    print(f"glip_novel in {args.root}: {counts} images, classes: {', '.join(NOVEL_CLASSES)}")


if __name__ == "__main__":
    main()
