"""LVIS evaluation sets with the official GLIP prompt names.

Detectron2's own LVIS registrations (``lvis_v1_val``, ...) take their ``thing_classes`` from
each category's first synonym; the official GLIP evaluation prompts each category's ``name``
(microsoft/GLIP maskrcnn_benchmark/data/datasets/lvis.py, LvisDetection.categories). The two
differ for one LVIS v1 category (id 162: "bull" vs "horned_cow"), which changes that
category's prompt and the text context of its whole chunk.
"""

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json

from .checks import check_record_boxes

__all__ = ["LVIS_EVALUATION_SETS", "lvis_v1_official_names", "register_lvis_evaluation"]

# name -> (json, image root), relative to the datasets root: the official task configs
# (microsoft/GLIP configs/lvis/minival.yaml and val.yaml, DATASETS.REGISTER). Images are
# found from each entry's coco_url (".../val2017/000000xxxxxx.jpg") under the image root.
LVIS_EVALUATION_SETS = {
    # MDETR's 5000-image LVIS v1 minival (zero-shot numbers of the GLIP model zoo)
    "lvis_evaluation_mini_val": (
        "coco/annotations/lvis_v1_minival_inserted_image_name.json",
        "coco/",
    ),
    # the full LVIS v1 val (19809 images)
    "lvis_evaluation_val": ("coco/annotations/lvis_od_val.json", "coco/"),
}


def lvis_v1_official_names():
    """The 1203 LVIS v1 category names in id order (the json's ``name`` fields)."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    return [c["name"] for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]


def _load(json_file, image_root, name):
    # dataset_name=None: D2 would otherwise overwrite thing_classes with its synonyms.
    records = load_lvis_json(json_file, image_root, None)
    check_record_boxes(records, json_file)
    for r in records:
        r["dataset_name"] = name
    return records


def register_lvis_evaluation(name, json_file, image_root, class_names=None):
    """Register an LVIS-format evaluation set (lazy: nothing is read now).

    Args:
        json_file (str): LVIS-format annotations; category ids must be 1..C (D2's LVIS loader
            maps id k to class k - 1).
        image_root (str): folder holding each image's ``coco_url`` split folder, ending in "/".
        class_names (list[str] or None): the prompt names in category-id order; None: LVIS v1's
            official names (:func:`lvis_v1_official_names`).
    """
    names = list(class_names) if class_names is not None else lvis_v1_official_names()
    DatasetCatalog.register(name, lambda: _load(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="lvis", thing_classes=names
    )
