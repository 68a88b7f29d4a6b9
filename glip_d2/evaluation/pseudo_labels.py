"""How good are a teacher's pseudo-labels: precision / recall against true boxes.

For data whose true boxes are known but hidden from the teacher (glip_synth's caption split,
demo/self_training.py). A pseudo-label box counts as correct when it matches a true box at IoU
>= 0.5 (no +1) whose category its phrase names; each true box is matched once, best scores
first (greedy, as COCO matching). A phrase names a category when exactly one category name of
the truth file occurs in it as whole words ("small blue star" -> "blue star"); a phrase naming
none or several categories never matches class-aware.
"""

import json
import re

from .grounding import box_iou_xyxy

__all__ = ["phrase_category", "pseudo_label_quality"]


def phrase_category(phrase, categories):
    """The id of the one category whose name occurs in ``phrase`` (whole words), else None.

    Args:
        categories (dict[int, str]): id -> name.
    """
    found = [
        cid
        for cid, name in categories.items()
        if re.search(rf"\b{re.escape(name)}\b", phrase.lower())
    ]
    return found[0] if len(found) == 1 else None


def _match(boxes, truths, class_aware):
    """Greedy one-to-one matches of (score, box, category) against (category, box, ...)."""
    used, matched = set(), []
    for _, box, cat in sorted(boxes, key=lambda b: -b[0]):
        free = [
            j for j, t in enumerate(truths) if j not in used and (not class_aware or t[0] == cat)
        ]
        if not free:
            continue
        ious = box_iou_xyxy([box], [truths[j][1] for j in free])[0]
        best = int(ious.argmax())
        if ious[best] >= 0.5:
            used.add(free[best])
            matched.append((cat, free[best]))
    return matched


def pseudo_label_quality(pseudo_json, truth_json, conf=0.5, heldout_ids=()):
    """Precision / recall (percent) of the pseudo boxes with score > ``conf``.

    Args:
        pseudo_json (str): ``python -m glip_d2.pseudo_label``'s output.
        truth_json (str): COCO detection json of the same images (matched by ``file_name``);
            an annotation's optional ``mentioned`` (default True) says whether the caption
            names the object, and recall is given over all objects and over mentioned ones.
        heldout_ids (Iterable[int]): categories whose precision / recall is also reported.
    Returns:
        dict: ``pseudo_boxes``, ``objects``, ``mentioned_objects``, ``precision``,
        ``recall_mentioned``, ``recall_all``, ``precision_class_agnostic``,
        ``recall_class_agnostic``, ``heldout_precision``, ``heldout_recall_mentioned``.
    """
    with open(truth_json) as f:
        truth = json.load(f)
    with open(pseudo_json) as f:
        pseudo = json.load(f)
    categories = {c["id"]: c["name"] for c in truth["categories"]}
    heldout = set(heldout_ids)
    image_of = {im["file_name"]: im["id"] for im in truth["images"]}
    objects = {}
    for a in truth["annotations"]:
        x, y, w, h = a["bbox"]
        objects.setdefault(a["image_id"], []).append(
            (a["category_id"], [x, y, x + w, y + h], a.get("mentioned", True))
        )
    n = {
        "boxes": 0,
        "tp": 0,
        "tp_mentioned": 0,
        "tp_agnostic": 0,
        "boxes_heldout": 0,
        "tp_heldout": 0,
    }
    for entry in pseudo:
        boxes = [
            (score, box, phrase_category(e["phrase"], categories))
            for e in entry["entities"]
            for box, score in zip(e["boxes"], e["scores"], strict=True)
            if score > conf
        ]
        truths = objects.get(image_of[entry["file_name"]], [])
        matched = _match(boxes, truths, class_aware=True)
        n["boxes"] += len(boxes)
        n["boxes_heldout"] += sum(b[2] in heldout for b in boxes)
        n["tp"] += len(matched)
        n["tp_mentioned"] += sum(truths[j][2] for _, j in matched)
        n["tp_heldout"] += sum(cat in heldout for cat, _ in matched)
        n["tp_agnostic"] += len(_match(boxes, truths, class_aware=False))
    every = [t for ts in objects.values() for t in ts]
    mentioned = sum(t[2] for t in every)
    mentioned_heldout = sum(t[2] and t[0] in heldout for t in every)

    def pct(a, b):
        return round(100.0 * a / b, 2) if b else 0.0

    return {
        "pseudo_boxes": n["boxes"],
        "objects": len(every),
        "mentioned_objects": mentioned,
        "precision": pct(n["tp"], n["boxes"]),
        "recall_mentioned": pct(n["tp_mentioned"], mentioned),
        "recall_all": pct(n["tp"], len(every)),
        "precision_class_agnostic": pct(n["tp_agnostic"], n["boxes"]),
        "recall_class_agnostic": pct(n["tp_agnostic"], len(every)),
        "heldout_precision": pct(n["tp_heldout"], n["boxes_heldout"]),
        "heldout_recall_mentioned": pct(n["tp_heldout"], mentioned_heldout),
    }
