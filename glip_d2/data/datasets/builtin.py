"""Predefined GLIP datasets, rooted at ``$DETECTRON2_DATASETS`` (default ``datasets``).

COCO and LVIS use Detectron2's own registrations (``coco_2017_train``, ``lvis_v1_val``, ...),
whose ``thing_classes`` give the prompt; ``lvis_evaluation_{mini_val,val}`` are the official
LVIS evaluation sets with the official prompt names (``lvis.py``). ``datasets/README.md``
describes the expected layout.
Registration is lazy: nothing is read until ``DatasetCatalog.get``.
"""

import os

from detectron2.data import DatasetCatalog

from ..synthetic import ALL_CLASSES, HELDOUT_CLASSES, HELDOUT_GROUP, NOVEL_CLASSES, SEEN_CLASSES
from .coco import register_grounding_coco
from .lvis import LVIS_EVALUATION_SETS, register_lvis_evaluation
from .mdetr import register_mdetr_grounding
from .odinw import register_odinw

__all__ = ["register_all_glip", "register_glip_novel", "register_glip_synth"]

_MDETR = "mdetr_annotations"
_FLICKR_IMAGES = "flickr30k/flickr30k_images"
# The Flickr30K Entities folder (Sentences/, Annotations/, {train,val,test}.txt): phrase types
# of the val/test sets, for recall per type.
_FLICKR_ENTITIES = "flickr30k/flickr30k_entities"
_COCO_2014 = "coco/train2014"

# name -> (json under the root, image root(s) under the root, excluded sources, evaluator)
_PREDEFINED_MDETR = {
    **{
        f"flickr30k_{kind}_{split}": (
            f"{_MDETR}/final_flickr_{kind}GT_{split}.json",
            _FLICKR_IMAGES,
            (),
            "flickr",
        )
        for kind in ("separate", "merged")
        for split in ("train", "val", "test")
    },
    # GoldG = flickr30k_separate_train + mixed_train_no_coco (microsoft/GLIP
    # configs/pretrain/glip_Swin_T_O365_GoldG.yaml).
    "mixed_train_no_coco": (
        f"{_MDETR}/final_mixed_train_no_coco.json",
        {"vg": "gqa/images", "gqa": "gqa/images", "coco": _COCO_2014},
        ("coco",),
        "",
    ),
    **{
        f"{ds}_{split}": (f"{_MDETR}/final_{ds}_{split}.json", _COCO_2014, (), "refexp")
        for ds, splits in (
            ("refcoco", ("train", "val", "testA", "testB")),
            ("refcoco+", ("train", "val", "testA", "testB")),
            ("refcocog", ("train", "val", "test")),
        )
        for split in splits
    },
}

_PREDEFINED_COCO = {
    "object365_train": ("objects365/zhiyuan_objv2_train.json", "objects365/train"),
    "object365_val": ("objects365/zhiyuan_objv2_val.json", "objects365/val"),
}


def _join(root, path):
    if isinstance(path, dict):
        return {k: os.path.join(root, v) for k, v in path.items()}
    return os.path.join(root, path)


def register_glip_synth(root):
    """Register the synthetic benchmark found (or to be generated) under ``root/glip_synth``.

    Detection: ``glip_synth_{train,val,test_heldout}``; grounding captions:
    ``glip_synth_grounding_{train,val}``. ``thing_classes`` are preset (they are fixed by the
    generator); train/val hold the seen classes only, test_heldout all of them, and its
    evaluation also reports AP / AP50 over the held-out combinations alone
    (``AP-heldout_combinations``, see ``glip_d2.evaluation.category_groups``).
    """
    base = os.path.join(root, "glip_synth")
    for split in ("train", "val", "test_heldout"):
        classes = ALL_CLASSES if split == "test_heldout" else SEEN_CLASSES
        groups = {HELDOUT_GROUP: list(HELDOUT_CLASSES)} if split == "test_heldout" else None
        register_grounding_coco(
            f"glip_synth_{split}",
            os.path.join(base, "annotations", f"instances_{split}.json"),
            os.path.join(base, "images", split),
            metadata={
                "thing_classes": list(classes),
                "thing_dataset_id_to_contiguous_id": {
                    ALL_CLASSES.index(n) + 1: i for i, n in enumerate(classes)
                },
                **({"eval_category_groups": groups} if groups else {}),
            },
        )
    for split in ("train", "val"):
        register_mdetr_grounding(
            f"glip_synth_grounding_{split}",
            os.path.join(base, "annotations", f"grounding_{split}.json"),
            os.path.join(base, "images", split),
            evaluator_type="flickr",
        )


def register_glip_novel(root):
    """Register ``glip_novel_{train,val}``, the transfer experiment's new domain under
    ``root/glip_novel`` (``datasets/prepare_glip_novel.py``): 9 classes of colours and shapes
    that glip_synth never shows (``NOVEL_CLASSES``, category id = index + 1)."""
    base = os.path.join(root, "glip_novel")
    for split in ("train", "val"):
        register_grounding_coco(
            f"glip_novel_{split}",
            os.path.join(base, "annotations", f"instances_{split}.json"),
            os.path.join(base, "images", split),
            metadata={
                "thing_classes": list(NOVEL_CLASSES),
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(NOVEL_CLASSES))},
            },
        )


def register_all_glip(root):
    for name, (json_file, image_root, exclude, evaluator) in _PREDEFINED_MDETR.items():
        evaluated = name.startswith("flickr30k") and not name.endswith("_train")
        entities = os.path.join(root, _FLICKR_ENTITIES) if evaluated else None
        register_mdetr_grounding(
            name, _join(root, json_file), _join(root, image_root), exclude, evaluator, entities
        )
    for name, (json_file, image_root) in _PREDEFINED_COCO.items():
        register_grounding_coco(name, _join(root, json_file), _join(root, image_root))
    for name, (json_file, image_root) in LVIS_EVALUATION_SETS.items():
        register_lvis_evaluation(
            name, os.path.join(root, json_file), os.path.join(root, image_root)
        )
    register_odinw(root)
    register_glip_synth(root)
    register_glip_novel(root)


if "glip_synth_train" not in DatasetCatalog.list():
    register_all_glip(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
