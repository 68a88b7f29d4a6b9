"""Visual Genome-style region descriptions and caption sets with pseudo-labels (microsoft/GLIP
maskrcnn_benchmark/data/datasets/caption.py reads the latter)."""

import json
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from torchvision.ops import nms as torchvision_nms

from .checks import SpanChecker, check_record_boxes

__all__ = [
    "load_region_descriptions",
    "register_region_descriptions",
    "load_pseudo_label_captions",
    "register_pseudo_label_captions",
    "register_pseudo_label_sets",
    "screen_teacher_boxes",
]

logger = logging.getLogger(__name__)


def load_region_descriptions(json_file, image_root, dataset_name=None):
    """Visual Genome ``region_descriptions.json``: every region's phrase becomes one record.

    The file is a list of ``{"id" or "image_id", "regions": [{"phrase", "x", "y", "width",
    "height"}, ...]}``; the image is ``{image_root}/{image_id}.jpg``. The whole phrase is the
    grounded span of its one box.
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    records = []
    for entry in data:
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None or "regions" not in entry:
            raise ValueError(f"{json_file}: entry without id/regions: {str(entry)[:200]}")
        for region in entry["regions"]:
            phrase = region["phrase"].strip()
            if not phrase:
                continue
            record = {
                "file_name": os.path.join(image_root, f"{image_id}.jpg"),
                "image_id": region.get("region_id", image_id),
                "caption": phrase,
                "annotations": [
                    {
                        "bbox": [region["x"], region["y"], region["width"], region["height"]],
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "tokens_positive": [[0, len(phrase)]],
                        "category_id": 0,
                        "iscrowd": 0,
                    }
                ],
            }
            if dataset_name is not None:
                record["dataset_name"] = dataset_name
            records.append(record)
    check_record_boxes(records, json_file)
    logger.info("Loaded %d region records from %s", len(records), json_file)
    return records


def screen_teacher_boxes(boxes, scores, conf=0.5, nms=-1.0, min_boxes=1):
    """The official rule for which teacher boxes of an image-caption pair are trained on
    (microsoft/GLIP maskrcnn_benchmark/data/datasets/caption.py, ``CaptionTSV.__getitem__``
    with ``FURTHER_SCREEN``): boxes with score > ``conf`` (``CAPTION_CONF``); the image is
    skipped when fewer than ``min_boxes`` remain (``CAPTION_MIN_BOX``); then, when ``nms`` > 0
    (``CAPTION_NMS``), class-agnostic NMS at IoU ``nms`` over the remaining boxes of all
    phrases (torchvision's IoU, as official).

    Args:
        boxes (array-like): (K, 4) xyxy.
        scores (array-like): (K,).
    Returns:
        list[int] or None: indices of the kept boxes in descending score order after NMS, else
        in input order; None when the image is skipped.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    keep = torch.nonzero(scores > conf).flatten()
    if len(keep) < min_boxes:
        return None
    if nms > 0 and len(keep):
        keep = keep[torchvision_nms(boxes[keep], scores[keep], nms)]
    return keep.tolist()


def load_pseudo_label_captions(
    json_file, image_root, dataset_name=None, conf=0.5, min_boxes=1, nms=-1.0
):
    """Image-caption pairs with teacher boxes (the official "v2" pseudo-label record).

    The file is a list of ``{"file_name", "caption", "height", "width", "entities": [
    {"tokens_positive": [[start, end], ...], "boxes": [[x1, y1, x2, y2], ...] (absolute, D2's
    XYXY_ABS: ``x2 = x + w``), "scores": [...]}]}`` (``python -m glip_d2.pseudo_label`` writes
    it). Every box inherits its entity's spans; :func:`screen_teacher_boxes` picks the boxes
    (``conf``, ``nms``) and drops records with fewer than ``min_boxes``.
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    records, dropped = [], 0
    check = SpanChecker(json_file)
    for i, entry in enumerate(data):
        caption = entry.get("caption")
        if not caption:
            raise ValueError(f"{json_file}: record {i} ({entry.get('file_name')}) has no caption")
        boxes, scores, spans = [], [], []
        for entity in entry.get("entities", []):
            where = f"{json_file}: image id={entry.get('image_id', i)} ({entry.get('file_name')!r})"
            entity_spans = check(caption, entity["tokens_positive"], where)
            if len(entity["boxes"]) != len(entity["scores"]):
                raise ValueError(f"{json_file}: record {i} has boxes and scores of unequal length")
            boxes += [list(b) for b in entity["boxes"]]
            scores += [float(v) for v in entity["scores"]]
            spans += [entity_spans] * len(entity["boxes"])
        try:
            keep = screen_teacher_boxes(boxes, scores, conf, nms, min_boxes)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{json_file}: record {i}: boxes must be [x1, y1, x2, y2]: {e}") from e
        if keep is None:
            dropped += 1
            continue
        annotations = [
            {
                "bbox": boxes[k],
                "bbox_mode": BoxMode.XYXY_ABS,
                "tokens_positive": spans[k],
                "category_id": 0,
                "iscrowd": 0,
                "score": scores[k],
            }
            for k in keep
        ]
        record = {
            "file_name": os.path.join(image_root, entry["file_name"]),
            "image_id": entry.get("image_id", i),
            "caption": caption,
            "annotations": annotations,
        }
        for key in ("height", "width"):
            if key in entry:
                record[key] = entry[key]
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        records.append(record)
    check.report()
    check_record_boxes(records, json_file)
    logger.info(
        "Loaded %d caption records from %s (%d with < %d boxes over %.2f dropped)",
        len(records),
        json_file,
        dropped,
        min_boxes,
        conf,
    )
    return records


def register_region_descriptions(name, json_file, image_root):
    """Register a Visual Genome region-description set (lazy).

    User API: no predefined name or config key registers such a set; call this before
    building the trainer, then list ``name`` in ``DATASETS.TRAIN`` (``datasets/README.md``).
    """
    DatasetCatalog.register(name, lambda: load_region_descriptions(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root)


def register_pseudo_label_captions(name, json_file, image_root, conf=0.5, min_boxes=1, nms=-1.0):
    """Register a pseudo-labelled caption set (lazy); the screening arguments are those of
    :func:`load_pseudo_label_captions` (official GLIP-L values by default).

    User API: call this before building the trainer, then list ``name`` in ``DATASETS.TRAIN``,
    or list ``[name, json_file, image_root]`` in ``DATASETS.GLIP.PSEUDO_LABEL_SETS``
    (:func:`register_pseudo_label_sets`, which takes the screening from the config). Its
    records are packed with negative captions in training (metadata ``pseudo_label_captions``).
    """
    DatasetCatalog.register(
        name,
        lambda: load_pseudo_label_captions(json_file, image_root, name, conf, min_boxes, nms),
    )
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        pseudo_label_captions=True,
        screening=(float(conf), int(min_boxes), float(nms)),
    )


def register_pseudo_label_sets(cfg):
    """Register the sets of ``DATASETS.GLIP.PSEUDO_LABEL_SETS`` (``[name, json_file,
    image_root]`` each) with ``DATASETS.GLIP.CAPTION_CONF`` / ``CAPTION_MIN_BOX`` /
    ``CAPTION_NMS``. A name registered before with the same file and screening is kept.
    """
    g = cfg.DATASETS.GLIP
    screening = (float(g.CAPTION_CONF), int(g.CAPTION_MIN_BOX), float(g.CAPTION_NMS))
    for k, entry in enumerate(g.PSEUDO_LABEL_SETS):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or not all(isinstance(v, str) and v for v in entry)
        ):
            raise ValueError(
                f"DATASETS.GLIP.PSEUDO_LABEL_SETS[{k}] must be [name, json_file, image_root] "
                f"(three non-empty strings), got {entry!r}"
            )
        name, json_file, image_root = entry
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file", None), meta.get("screening", None)) == (
                json_file,
                screening,
            ):
                continue
            raise ValueError(
                f"DATASETS.GLIP.PSEUDO_LABEL_SETS[{k}]: dataset {name!r} is already registered "
                f"with other data ({meta.get('json_file', None)!r}); choose another name"
            )
        register_pseudo_label_captions(name, json_file, image_root, *screening)
