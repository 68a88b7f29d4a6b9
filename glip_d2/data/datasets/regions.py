"""Visual Genome-style region descriptions and caption sets with pseudo-labels (microsoft/GLIP
maskrcnn_benchmark/data/datasets/caption.py reads the latter)."""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .checks import SpanChecker, check_record_boxes

__all__ = [
    "load_region_descriptions",
    "register_region_descriptions",
    "load_pseudo_label_captions",
    "register_pseudo_label_captions",
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


def load_pseudo_label_captions(json_file, image_root, dataset_name=None, conf=0.5, min_boxes=1):
    """Image-caption pairs with teacher boxes (the official "v2" pseudo-label record).

    The file is a list of ``{"file_name", "caption", "height", "width", "entities": [
    {"tokens_positive": [[start, end], ...], "boxes": [[x1, y1, x2, y2], ...] (absolute, pixel
    corners), "scores": [...]}]}``. Every box inherits its entity's spans; boxes with score
    <= ``conf`` (``CAPTION_CONF``) are dropped, then records with fewer than ``min_boxes``
    boxes (``CAPTION_MIN_BOX``).
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    records, dropped = [], 0
    check = SpanChecker(json_file)
    for i, entry in enumerate(data):
        caption = entry.get("caption")
        if not caption:
            raise ValueError(f"{json_file}: record {i} ({entry.get('file_name')}) has no caption")
        annotations = []
        for entity in entry.get("entities", []):
            where = f"{json_file}: image id={entry.get('image_id', i)} ({entry.get('file_name')!r})"
            spans = check(caption, entity["tokens_positive"], where)
            if len(entity["boxes"]) != len(entity["scores"]):
                raise ValueError(f"{json_file}: record {i} has boxes and scores of unequal length")
            for box, score in zip(entity["boxes"], entity["scores"], strict=True):
                if score > conf:
                    annotations.append(
                        {
                            "bbox": list(box),
                            "bbox_mode": BoxMode.XYXY_ABS,
                            "tokens_positive": spans,
                            "category_id": 0,
                            "iscrowd": 0,
                            "score": float(score),
                        }
                    )
        if len(annotations) < min_boxes:
            dropped += 1
            continue
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


def register_pseudo_label_captions(name, json_file, image_root, conf=0.5, min_boxes=1):
    """Register a pseudo-labelled caption set (lazy).

    User API: no predefined name or config key registers such a set; call this before
    building the trainer, then list ``name`` in ``DATASETS.TRAIN`` (``datasets/README.md``).
    """
    DatasetCatalog.register(
        name,
        lambda: load_pseudo_label_captions(json_file, image_root, name, conf, min_boxes),
    )
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root)
