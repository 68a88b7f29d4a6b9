"""MDETR-format grounding sets: Flickr30K entities, GoldG "mixed", RefCOCO/+/g (microsoft/GLIP
maskrcnn_benchmark/data/datasets/flickr.py, mixed.py, refexp.py over modulated_coco.py's
``ModulatedDataset``)."""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .checks import SpanChecker, check_record_boxes
from .flickr_entities import attach_flickr_phrase_types

__all__ = ["load_mdetr_json", "register_mdetr_grounding"]

logger = logging.getLogger(__name__)

# Per-entry keys kept for grounding evaluation (Flickr phrase recall, RefCOCO accuracy).
_EVAL_KEYS = ("tokens_positive_eval", "phrase_ids", "sentence_id", "original_img_id")


def _image_root(image_root, entry, json_file):
    if isinstance(image_root, str):
        return image_root
    source = entry.get("data_source")
    if source not in image_root:
        raise ValueError(
            f"{json_file}: image {entry.get('file_name')!r} has data_source {source!r}, "
            f"not among the image roots {sorted(image_root)}"
        )
    return image_root[source]


def load_mdetr_json(json_file, image_root, dataset_name=None, exclude_sources=()):
    """Read an MDETR-format json into D2 records.

    Args:
        json_file (str): COCO-like json whose ``images`` carry ``caption`` and whose
            ``annotations`` carry ``bbox`` (xywh) and ``tokens_positive`` char spans.
        image_root (str | dict[str, str]): image folder, or one per ``data_source``
            (GoldG "mixed" holds COCO and Visual Genome/GQA images).
        exclude_sources (Iterable[str]): drop entries whose ``data_source`` is listed
            (GoldG: ``("coco",)``, so COCO images never leak into pre-training).

    Returns:
        list[dict]: ``file_name, height, width, image_id, caption, annotations`` (``bbox``,
        ``bbox_mode``, ``tokens_positive``, ``category_id`` 0, ``iscrowd``) and the
        evaluation keys ``tokens_positive_eval``, ``phrase_ids``, ... when present.
    Raises:
        ValueError: bad boxes or spans (:mod:`.checks`), naming the file and the image id.
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{json_file}: MDETR json has no {key!r} list")
    annos_per_image = {}
    for anno in data["annotations"]:
        annos_per_image.setdefault(anno["image_id"], []).append(anno)
    records, excluded = [], 0
    check = SpanChecker(json_file)
    for entry in data["images"]:
        if entry.get("data_source") in exclude_sources:
            excluded += 1
            continue
        if "caption" not in entry:
            raise ValueError(f"{json_file}: image entry id={entry.get('id')} has no caption")
        caption = entry["caption"]
        record = {
            "file_name": os.path.join(
                _image_root(image_root, entry, json_file), entry["file_name"]
            ),
            "height": entry["height"],
            "width": entry["width"],
            "image_id": entry["id"],
            "caption": caption,
        }
        for key in _EVAL_KEYS:
            if key in entry:
                record[key] = entry[key]
        if entry.get("tokens_positive_eval"):
            where = f"{json_file}: image id={entry['id']}, tokens_positive_eval"
            record["tokens_positive_eval"] = [
                check(caption, spans, f"{where}[{k}]")
                for k, spans in enumerate(entry["tokens_positive_eval"])
            ]
        annotations = []
        for anno in annos_per_image.get(entry["id"], []):
            spans = anno.get("tokens_positive")
            if not spans:
                raise ValueError(
                    f"{json_file}: annotation id={anno.get('id')} of image id={entry['id']} "
                    "has no tokens_positive"
                )
            where = f"{json_file}: annotation id={anno.get('id')} of image id={entry['id']}"
            annotations.append(
                {
                    "bbox": anno["bbox"],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "tokens_positive": check(caption, spans, where),
                    "category_id": 0,
                    "iscrowd": anno.get("iscrowd", 0),
                }
            )
        record["annotations"] = annotations
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        records.append(record)
    check.report()
    check_record_boxes(records, json_file)
    if excluded:
        logger.info("%s: excluded %d entries from %s", json_file, excluded, list(exclude_sources))
    logger.info("Loaded %d grounding records from %s", len(records), json_file)
    return records


def register_mdetr_grounding(
    name, json_file, image_root, exclude_sources=(), evaluator_type="", entities_dir=None
):
    """Register an MDETR-format grounding set (lazy: nothing is read now).

    ``entities_dir`` (Flickr30K): the Flickr30K Entities folder; when it holds ``Sentences/``
    the records get ``phrase_types`` (:func:`attach_flickr_phrase_types`).
    """

    def load():
        records = load_mdetr_json(json_file, image_root, name, exclude_sources)
        if entities_dir is not None:
            attach_flickr_phrase_types(records, entities_dir)
        return records

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type=evaluator_type,
        thing_classes=["object"],
    )
