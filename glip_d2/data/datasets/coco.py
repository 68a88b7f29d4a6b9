"""COCO-format detection sets (ODinW, Objects365, custom) whose categories make the prompt."""

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["register_grounding_coco"]


def _load(json_file, image_root, name):
    records = load_coco_json(json_file, image_root, name)
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
