"""ODinW-13 / ODinW-35 registrations in the official folder layout (datasets/README.md).

Every set of :data:`~glip_d2.data.datasets.odinw_sets.ODINW_SETS` is registered as
``{collection}_{set}_{split}`` for ``collection`` ``odinw35`` (all 35) and ``odinw13`` (the 13
of the GLIP paper), splits ``train``, ``val``, ``test`` and, where the official config evaluates
on it, ``minival``; the official prepared k-shot files as ``{collection}_{set}_train_shot{k}_seed
{s}`` (k in 1, 3, 5, 10; s in 3, 30, 300). Nothing is read at registration.

Loading uses Detectron2's ``load_coco_json``: ``thing_classes`` are the json's category names.
The official configs rename the categories for the prompt (``OVERRIDE_CATEGORY``, by id) and
add words around some of them (``CAPTION_PROMPT``, odinw_35 configs only); both become the
dataset's ``prompt_overrides`` metadata, which the mapper's evaluation prompt (and the fixed
training prompt) applies through ``build_detection_prompt``. Metadata ``evaluator_type`` is
``"odinw"``: COCO AP per set, and the average over the ODinW sets of ``DATASETS.TEST``.
"""

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ...text import clean_name
from .odinw_sets import ODINW_SETS

__all__ = [
    "ODINW_COLLECTIONS",
    "odinw_dataset_name",
    "odinw_dataset_names",
    "odinw_prompt_overrides",
    "odinw_split_files",
    "register_odinw",
    "register_odinw_set",
]

logger = logging.getLogger(__name__)

ODINW_COLLECTIONS = ("odinw13", "odinw35")
PREPARED_SHOTS = (1, 3, 5, 10)
PREPARED_SEEDS = (3, 30, 300)
_SPLIT_DIRS = {"train": "train", "val": "valid", "minival": "mini_val"}
_ANNOTATIONS = "annotations_without_background.json"


def odinw_split_files(spec, split, root):
    """``(json_file, image_root)`` of one split of one set under ``root`` (official layout).

    ``split`` is ``train``/``val``/``test``/``minival`` or ``train_shot{k}_seed{s}``.
    """
    base = os.path.join(root, spec.root)
    shot = None
    if split.startswith("train_shot"):
        shot, split = split, "train"
    if spec.layout == "flat":
        folder = base
        json_name = f"{split}_{_ANNOTATIONS}"
    else:
        folder = os.path.join(base, spec.test_dir if split == "test" else _SPLIT_DIRS[split])
        json_name = _ANNOTATIONS
    if shot is not None:
        json_name = f"fewshot_{shot}.json"
    return os.path.join(folder, json_name), folder


def odinw_dataset_name(collection, set_name, split):
    return f"{collection}_{set_name}_{split}"


def odinw_dataset_names(collection="odinw13", split="eval"):
    """The registered names of one split of every set of ``collection``.

    ``split="eval"`` takes each set's official evaluation split (``val`` or ``minival``), as
    the ODinW configs' ``DATASETS.TEST``; ``"test"``, ``"train"`` etc. are taken as given.
    """
    if collection not in ODINW_COLLECTIONS:
        raise ValueError(f"unknown ODinW collection {collection!r}; one of {ODINW_COLLECTIONS}")
    sets = [s for s in ODINW_SETS if collection == "odinw35" or s.odinw13]
    return [
        odinw_dataset_name(collection, s.name, s.eval_split if split == "eval" else split)
        for s in sets
    ]


def odinw_prompt_overrides(spec, thing_classes, id_map, caption_prompt=True):
    """``{json category name: {"prefix", "name", "suffix"}}`` from the set's official overrides.

    ``OVERRIDE_CATEGORY`` names pass through ``clean_name`` as the official evaluation prompt
    does; ``CAPTION_PROMPT`` entries replace them with their own name, prefix and suffix. An
    override that is blank after cleaning (ChessPieces' id 1) keeps the json name, since an
    empty phrase cannot be scored.
    """
    json_ids = sorted(id_map, key=id_map.get)
    expected = list(range(1, len(spec.categories) + 1))
    if json_ids != expected:
        raise ValueError(
            f"ODinW set {spec.name!r}: the json has category ids {json_ids}, but the official "
            f"config overrides ids {expected[0]}..{expected[-1]}; is it the right json?"
        )
    if len(set(thing_classes)) != len(thing_classes):
        raise ValueError(f"ODinW set {spec.name!r}: repeated category names {thing_classes}")
    prompts = spec.caption_prompt if caption_prompt else ()
    overrides = {}
    for i, json_name in enumerate(thing_classes):
        if prompts:
            prefix, name, suffix = prompts[i]
            overrides[json_name] = {"prefix": prefix, "name": name, "suffix": suffix}
        elif clean_name(spec.categories[i]).strip():
            overrides[json_name] = {"name": clean_name(spec.categories[i])}
    return overrides


def _load_odinw(json_file, image_root, name, spec, caption_prompt):
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"dataset {name!r}: annotation file {json_file} not found. Download ODinW into "
            "$DETECTRON2_DATASETS/odinw (official layout: datasets/README.md, section ODinW)"
        )
    records = load_coco_json(json_file, image_root, name)
    meta = MetadataCatalog.get(name)
    meta.set(
        prompt_overrides=odinw_prompt_overrides(
            spec, meta.thing_classes, meta.thing_dataset_id_to_contiguous_id, caption_prompt
        )
    )
    for r in records:
        r["dataset_name"] = name
    return records


def register_odinw_set(root, spec, collection):
    """Register every split of one ODinW set for one collection (lazy)."""
    splits = ["train", "val", "test"] + (["minival"] if spec.eval_split == "minival" else [])
    splits += [f"train_shot{k}_seed{s}" for k in PREPARED_SHOTS for s in PREPARED_SEEDS]
    caption_prompt = collection != "odinw13"  # only the odinw_35 configs carry CAPTION_PROMPT
    if spec.caption_prompt and len(spec.caption_prompt) != len(spec.categories):
        raise ValueError(f"ODinW set {spec.name!r}: one caption prompt per category needed")
    for split in splits:
        name = odinw_dataset_name(collection, spec.name, split)
        json_file, image_root = odinw_split_files(spec, split, root)
        DatasetCatalog.register(
            name,
            lambda j=json_file, i=image_root, n=name: _load_odinw(j, i, n, spec, caption_prompt),
        )
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="odinw"
        )


def register_odinw(root, sets=None, collections=ODINW_COLLECTIONS):
    """Register ODinW under ``root`` (``$DETECTRON2_DATASETS``): see the module docstring.

    ``odinw13`` takes the sets marked ``odinw13``; any other collection name takes them all.
    """
    for collection in collections:
        for spec in ODINW_SETS if sets is None else sets:
            if collection != "odinw13" or spec.odinw13:
                register_odinw_set(root, spec, collection)
