"""COCO-format detection sets (ODinW, Objects365, custom) whose categories make the prompt."""

import json

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.utils.file_io import PathManager

from .checks import check_record_boxes

__all__ = ["register_coco_from_cfg", "register_grounding_coco"]


def _no_categories(json_file):
    """Whether the json lacks a non-empty ``categories`` list (read on failure only)."""
    try:
        with PathManager.open(json_file) as f:
            return not json.load(f).get("categories")
    except (OSError, ValueError, AttributeError):
        return False


def _load(json_file, image_root, name):
    try:
        records = load_coco_json(json_file, image_root, name)
    except (KeyError, ValueError) as e:
        # D2 fails on an empty list with "min() arg is an empty sequence".
        if _no_categories(json_file):
            raise ValueError(
                f"{json_file}: the 'categories' list is empty or missing; a detection set needs "
                "its categories (their names make the prompt)"
            ) from e
        raise
    check_record_boxes(records, json_file)
    for r in records:
        r["dataset_name"] = name
    return records


def register_grounding_coco(name, json_file, image_root, metadata=None):
    """Register a COCO-format detection set for GLIP (lazy: nothing is read now).

    Records are D2's (``load_coco_json``) plus ``dataset_name``, so a mixed loader's mapper
    finds the ``thing_classes`` (set from the json's categories in id order at load time)
    that make its prompts. ``metadata`` may preset ``thing_classes`` and the id map; they
    must then equal what the json gives.
    """
    DatasetCatalog.register(name, lambda: _load(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def register_coco_from_cfg(cfg):
    """Register the ``DATASETS.GLIP.REGISTER_COCO`` sets: ``[[name, json_file, image_root], ...]``.

    Idempotent: a name already registered with the same files is left alone; with other files
    it is an error, as is a malformed entry.
    """
    for i, entry in enumerate(cfg.DATASETS.GLIP.REGISTER_COCO):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise ValueError(
                f"DATASETS.GLIP.REGISTER_COCO[{i}] must be [name, json_file, image_root], "
                f"got {entry!r}"
            )
        name, json_file, image_root = (str(x) for x in entry)
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file", None), meta.get("image_root", None)) != (
                json_file,
                image_root,
            ):
                raise ValueError(
                    f"DATASETS.GLIP.REGISTER_COCO[{i}]: dataset {name!r} is already registered "
                    f"with json_file={meta.get('json_file', None)!r}; choose another name"
                )
            continue
        register_grounding_coco(name, json_file, image_root)
