#!/usr/bin/env python
"""Generate the glip_synth benchmark under $DETECTRON2_DATASETS/glip_synth (default datasets/).

Scenes of coloured shapes on noisy textured backgrounds, written as COCO detection json
(categories "red circle", ...) and MDETR-style grounding json (captions with exact char spans).
The vocabulary and held-out combinations come from ``glip_d2.data.synthetic``.

Splits:

* ``train`` / ``val``: only the *seen* colour-shape combinations.
* ``test_heldout``: every image holds at least one object of a *held-out* combination
  (``HELDOUT``), which never occurs in ``train`` or ``val``; its json lists all categories.
* ``captions`` (only when asked for: ``--num-captions N``): images of *every* combination,
  held-out ones included, each with one free caption and no box (the kind of data GLIP's
  self-training labels with a teacher); the true boxes sit in a separate file, to measure
  pseudo-labels against.

Layout under the root (``$DETECTRON2_DATASETS/glip_synth``)::

    images/{split}/{index:06d}.jpg      # JPEG quality 95
    annotations/instances_{split}.json     # COCO
    annotations/grounding_{split}.json     # MDETR format (train, val)
    annotations/captions.json              # captions split: COCO-captions style, no boxes
    annotations/captions_truth.json        # captions split: COCO boxes + caption spans
    meta.json                              # generator settings

A complete copy with the same settings (``meta.json``) is reused unless ``--force`` is given.
Run it as a script (``python datasets/prepare_glip_synth.py``) or, from the repository root,
import it (``from datasets.prepare_glip_synth import ensure_glip_synth``).
"""

import argparse
import json
import os
import shutil

import numpy as np
from PIL import Image

from glip_d2.data.shapes import render_scene
from glip_d2.data.synthetic import (
    ALL_CLASSES,
    CAPTION_SPLIT_SIZE,
    DEFAULT_COUNTS,
    HELDOUT,
    SEEN_CLASSES,
)

__all__ = [
    "generate_caption_split",
    "generate_glip_synth",
    "ensure_glip_synth",
    "render_scene",
    "main",
]

VERSION = 1  # of the generator; a copy written by another version is regenerated
SPLIT_INDEX = {"train": 0, "val": 1, "test_heldout": 2, "captions": 3}  # seeds per-image rngs
BOXED_SPLITS = ("train", "val", "test_heldout")


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


# Free captions of the captions split: an opening, the objects it mentions, an ending.
_OPENINGS = ("", "a picture of ", "an image with ", "there is ", "here we see ", "this shows ")
_ENDINGS = (".", "", " on a textured background.", " in the picture.")


def _free_caption(rng, objects):
    """One caption mentioning some of the objects (each with probability 0.85, at least one),
    with or without its size word. Returns (caption, {object index: [start, end)})."""
    mentioned = [i for i in range(len(objects)) if rng.random() < 0.85]
    if not mentioned:
        mentioned = [int(rng.integers(len(objects)))]
    caption = _OPENINGS[int(rng.integers(len(_OPENINGS)))]
    spans = {}
    for k, i in enumerate(mentioned):
        if k:
            caption += " and " if k == len(mentioned) - 1 else ", "
        phrase = objects[i]["name"]
        if rng.random() < 0.7:
            phrase = f"{objects[i]['size']} {phrase}"
        caption += "a "
        spans[i] = [len(caption), len(caption) + len(phrase)]
        caption += phrase
    caption += _ENDINGS[int(rng.integers(len(_ENDINGS)))]
    return caption, spans


def generate_caption_split(root, num_images, seed=0, height=256, width=256):
    """Render the ``captions`` split: images of all 20 combinations with one free caption each.

    Writes ``annotations/captions.json`` (COCO-captions style: ``images`` with ``id``,
    ``file_name``, ``height``, ``width``; ``annotations`` with ``id``, ``image_id``,
    ``caption``; no box) and ``annotations/captions_truth.json`` (COCO detection json of the
    true boxes of every object, ``mentioned`` saying whether the caption names it and
    ``tokens_positive`` where; each image entry holds its ``caption``).
    """
    split = "captions"
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [{"id": _class_id(n), "name": n} for n in ALL_CLASSES]
    captions = {"images": [], "annotations": []}
    truth = {"images": [], "annotations": [], "categories": categories}
    for idx in range(num_images):
        rng = np.random.default_rng([seed, SPLIT_INDEX[split], idx])
        pixels, objects = render_scene(rng, ALL_CLASSES, (), height, width)
        caption, spans = _free_caption(rng, objects)
        file_name = f"{idx:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), quality=95)
        image = {"id": idx + 1, "file_name": file_name, "height": height, "width": width}
        captions["images"].append(image)
        captions["annotations"].append({"id": idx + 1, "image_id": idx + 1, "caption": caption})
        truth["images"].append(dict(image, caption=caption))
        for i, o in enumerate(objects):
            x1, y1, x2, y2 = o["box"]
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": idx + 1,
                    "category_id": _class_id(o["name"]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    "mentioned": i in spans,
                    "tokens_positive": [spans[i]] if i in spans else [],
                }
            )
    ann_dir = os.path.join(root, "annotations")
    with open(os.path.join(ann_dir, "captions.json"), "w") as f:
        json.dump(captions, f)
    with open(os.path.join(ann_dir, "captions_truth.json"), "w") as f:
        json.dump(truth, f)


def _write_meta(root, counts, seed, height, width):
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


def generate_glip_synth(root, counts=None, seed=0, height=256, width=256):
    """Write every split under ``root``; ``counts`` maps split -> number of images (the
    ``captions`` split only when ``counts["captions"]`` > 0)."""
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    if not counts.get("captions"):
        counts.pop("captions", None)  # meta.json as before the captions split existed
    for split in BOXED_SPLITS:
        generate_split(root, split, counts[split], seed, height, width)
    if counts.get("captions"):
        generate_caption_split(root, counts["captions"], seed, height, width)
    return _write_meta(root, counts, seed, height, width)


def ensure_glip_synth(root=None, counts=None, seed=0):
    """Generate glip_synth under ``root`` unless a complete copy with the same settings exists.

    ``root`` defaults to ``$DETECTRON2_DATASETS/glip_synth`` (``datasets/glip_synth``). The
    ``captions`` split is made when ``counts`` asks for it; a copy whose boxed splits already
    match only gets the captions split added (the boxed splits do not depend on it).
    Returns the root path.
    """
    if root is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_synth")
    meta_file = os.path.join(root, "meta.json")
    wanted = dict(DEFAULT_COUNTS, **(counts or {}))
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        have = meta.get("counts", {})
        if (
            meta.get("version") == VERSION
            and meta.get("seed") == seed
            and all(have.get(s) == wanted[s] for s in BOXED_SPLITS)
        ):
            captions = wanted.get("captions", have.get("captions", 0))
            if captions == have.get("captions", 0):
                return root
            os.remove(meta_file)  # incomplete until the captions split is written
            shutil.rmtree(os.path.join(root, "images", "captions"), ignore_errors=True)
            if captions:
                generate_caption_split(root, captions, seed, *meta["size_hw"])
            counts = {**{s: wanted[s] for s in BOXED_SPLITS}, "captions": captions}
            if not captions:
                counts.pop("captions")
            _write_meta(root, counts, seed, *meta["size_hw"])
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
    parser.add_argument(
        "--num-captions",
        type=int,
        default=None,
        help="images of the caption-only split (default: keep what is there, none at first; "
        f"{CAPTION_SPLIT_SIZE} for the self-training experiment)",
    )
    args = parser.parse_args(argv)
    counts = {s: getattr(args, f"num_{s}") for s in DEFAULT_COUNTS}
    for split, n in counts.items():
        if n < 1:
            parser.error(f"--num-{split.replace('_', '-')} must be >= 1, got {n}")
    if args.num_captions is not None:
        if args.num_captions < 0:
            parser.error(f"--num-captions must be >= 0, got {args.num_captions}")
        counts["captions"] = args.num_captions
    if args.force:
        os.makedirs(args.root, exist_ok=True)
        generate_glip_synth(args.root, counts, args.seed)
    else:
        ensure_glip_synth(args.root, counts, args.seed)
    print(f"glip_synth in {args.root}: {counts}")
    print("held-out colour-shape combinations:", ", ".join(" ".join(p) for p in HELDOUT))


if __name__ == "__main__":
    main()
