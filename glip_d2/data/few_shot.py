"""k-shot subsets of COCO-format detection sets (``DATASETS.GLIP.FEW_SHOT``).

The rule is the official one (microsoft/GLIP maskrcnn_benchmark/data/datasets/coco.py,
``COCODataset.__init__``, and modulated_coco.py, ``CocoGrounding.__init__``, ``few_shot``):

1. Images are taken in increasing image-id order; images without a valid annotation are
   dropped first (``has_valid_annotation``: at least one annotation, and not every box 1 px or
   less wide or high). Crowd annotations count like the others, as officially.
2. With a non-zero seed the remaining ids are shuffled by ``random.Random(seed).shuffle``
   (``COCODataset`` with ``DATASETS.SHUFFLE_SEED``); seed 0 keeps the sorted order, which is what
   the official ODinW loader (``CocoGrounding``) always does.
3. Every category starts with a budget of ``k``. An image is kept when at least one category
   it contains still has budget left; then the budget of *every* category it contains drops by
   one, whatever its number of instances of that category (an image-level count).
4. A kept image keeps all its annotations, also those of categories already complete, so a
   category can end with more than ``k`` images and many more than ``k`` instances. A category
   with fewer than ``k`` valid images keeps all of them.

The official code indexes its budget list by ``category_id - 1``, which assumes json ids
``1..C``; here the budget is per contiguous class id, which gives the same subset for such
jsons and also works for sparse ids (COCO's 1..90).
"""

import itertools
import logging
import random

from detectron2.structures import BoxMode
from tabulate import tabulate

__all__ = ["few_shot_subset", "few_shot_table", "is_detection_dataset", "log_few_shot"]

logger = logging.getLogger(__name__)


def is_detection_dataset(records):
    """True for COCO-format detection records (``annotations`` with ``category_id``, no caption)."""
    for record in records:
        if "caption" in record:
            return False
        annos = record.get("annotations", [])
        if annos:
            return all("category_id" in a for a in annos)
    return False


def _has_valid_annotation(record):
    """Official ``has_valid_annotation``: some annotation, not every box <= 1 px in w or h."""
    annos = record.get("annotations", [])
    if not annos:
        return False
    return not all(any(side <= 1 for side in _wh(a)) for a in annos)


def _wh(anno):
    mode = anno.get("bbox_mode", BoxMode.XYWH_ABS)
    _, _, w, h = BoxMode.convert(list(anno["bbox"]), mode, BoxMode.XYWH_ABS)
    return w, h


def few_shot_subset(records, k, num_classes, seed=0):
    """The official k-shot subset of one detection set (rule in the module docstring).

    Args:
        records (list[dict]): Detectron2 records of one set (contiguous ``category_id``).
        k (int): shots per category, >= 1.
        num_classes (int): number of categories (``len(thing_classes)``).
        seed (int): 0 keeps image-id order; otherwise the shuffle seed.
    Returns:
        list[dict]: the kept records (the same objects), in selection order.
    """
    if k < 1:
        raise ValueError(f"DATASETS.GLIP.FEW_SHOT must be >= 1 to select a subset, got {k}")
    candidates = sorted(
        (r for r in records if _has_valid_annotation(r)), key=lambda r: r["image_id"]
    )
    if seed:
        random.Random(seed).shuffle(candidates)
    budget = [k] * num_classes
    kept = []
    for record in candidates:
        classes = {int(a["category_id"]) for a in record["annotations"]}
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"record {record.get('file_name')!r}: category ids {sorted(bad)} outside the "
                f"{num_classes} classes of its dataset"
            )
        if any(budget[c] > 0 for c in classes):
            kept.append(record)
            for c in classes:
                budget[c] -= 1
    return kept


def few_shot_table(records, class_names):
    """A compact table of images and instances per category (for the log).

    Returns:
        (str, list[int], list[int]): the table, images per category, instances per category.
    """
    images = [0] * len(class_names)
    instances = [0] * len(class_names)
    for record in records:
        classes = [int(a["category_id"]) for a in record["annotations"]]
        for c in classes:
            instances[c] += 1
        for c in set(classes):
            images[c] += 1
    cells = list(
        itertools.chain.from_iterable(
            [_short(name), n_img, n_inst]
            for name, n_img, n_inst in zip(class_names, images, instances, strict=True)
        )
    )
    groups = min(3, len(class_names))
    width = 3 * groups
    cells.extend([None] * (-len(cells) % width))
    cells.extend(["total", len(records), sum(instances)] + [None] * (width - 3))
    rows = [cells[i : i + width] for i in range(0, len(cells), width)]
    table = tabulate(
        rows,
        headers=["category", "images", "instances"] * groups,
        tablefmt="pipe",
        numalign="left",
        stralign="center",
    )
    return table, images, instances


def _short(name):
    return name if len(name) <= 18 else name[:16] + ".."


def log_few_shot(name, full, subset, class_names, k, seed):
    """Log the subset's table and warn about categories that have fewer than ``k`` images."""
    table, images, _ = few_shot_table(subset, class_names)
    logger.info(
        f"{k}-shot subset of {name!r} (seed {seed}): {len(subset)} of {len(full)} images\n{table}"
    )
    short = [n for n, count in zip(class_names, images, strict=True) if count < k]
    if short:
        logger.warning(
            f"{name!r}: {len(short)} categories have fewer than {k} images in the whole set "
            f"(all of them are kept): {short[:10]}{' ...' if len(short) > 10 else ''}"
        )
