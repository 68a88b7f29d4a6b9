"""Caption retrieval sets: images with their captions, evaluated by image->text and text->image
recall (``evaluator_type`` "retrieval", ``glip_d2.engine.evaluate_retrieval``).

A record is ``{"file_name", "image_id", "captions": [str, ...], "dataset_name"}`` (plus
``height``/``width`` when the annotation gives them). Layouts read (``datasets/README.md``):

* Karpathy's split file (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"images":
  [{"filepath"?, "filename", "split", "sentences": [{"raw": ...}], "cocoid" | "imgid"}]}``;
  the images of one ``split`` ("test") are kept, at ``image_root/filepath/filename``.
* a list ``[{"image": relative path, "caption": [str, ...] | str, "image_id"?}]`` (the test
  files of ALBEF / X-VLM), at ``image_root/image``.
* glip_synth's MDETR-format grounding json (one entry per caption): entries of one image are
  grouped (:func:`load_grounding_captions`).
"""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

__all__ = [
    "RETRIEVAL_SETS",
    "load_caption_retrieval_json",
    "load_grounding_captions",
    "register_caption_retrieval",
    "register_all_retrieval",
]

logger = logging.getLogger(__name__)

# name -> (json under the datasets root, image root under it, loader, Karpathy split)
RETRIEVAL_SETS = {
    "coco_2014_karpathy_test_retrieval": (
        "coco/annotations/dataset_coco.json",
        "coco",
        "caption_json",
        "test",
    ),
    "flickr30k_karpathy_test_retrieval": (
        "flickr30k/dataset_flickr30k.json",
        "flickr30k/flickr30k_images",
        "caption_json",
        "test",
    ),
    "glip_synth_val_retrieval": (
        "glip_synth/annotations/grounding_val.json",
        "glip_synth/images/val",
        "grounding_json",
        None,
    ),
}


def _captions(value, where):
    captions = [value] if isinstance(value, str) else list(value or [])
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{where}: needs one or more non-empty captions, got {value!r}")
    return captions


def load_caption_retrieval_json(json_file, image_root, dataset_name=None, split="test"):
    """Read a Karpathy split file or an ALBEF-style list (module docstring) into records."""
    with PathManager.open(json_file) as f:
        data = json.load(f)
    records = []
    if isinstance(data, dict):
        if "images" not in data:
            raise ValueError(f"{json_file}: a Karpathy split file needs an 'images' list")
        for i, entry in enumerate(data["images"]):
            if entry.get("split") != split:
                continue
            where = f"{json_file}: images[{i}] ({entry.get('filename')!r})"
            if "filename" not in entry or "sentences" not in entry:
                raise ValueError(f"{where}: needs 'filename' and 'sentences'")
            raw = [s.get("raw", "") if isinstance(s, dict) else s for s in entry["sentences"]]
            records.append(
                {
                    "file_name": os.path.join(
                        image_root, entry.get("filepath", ""), entry["filename"]
                    ),
                    "image_id": entry.get("cocoid", entry.get("imgid", i)),
                    "captions": _captions(raw, where),
                }
            )
        if not records:
            raise ValueError(f"{json_file}: no image of split {split!r}")
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            where = f"{json_file}: entry {i}"
            if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
                raise ValueError(f"{where}: needs 'image' and 'caption'")
            records.append(
                {
                    "file_name": os.path.join(image_root, entry["image"]),
                    "image_id": entry.get("image_id", i),
                    "captions": _captions(entry["caption"], where),
                }
            )
    else:
        raise ValueError(f"{json_file}: expected a Karpathy split dict or a list of entries")
    for r in records:
        if dataset_name is not None:
            r["dataset_name"] = dataset_name
    logger.info("Loaded %d retrieval images from %s", len(records), json_file)
    return records


def load_grounding_captions(json_file, image_root, dataset_name=None):
    """Every caption of an MDETR-format grounding json, grouped by image file (glip_synth)."""
    with PathManager.open(json_file) as f:
        data = json.load(f)
    if "images" not in data:
        raise ValueError(f"{json_file}: MDETR json has no 'images' list")
    by_file = {}
    for entry in data["images"]:
        where = f"{json_file}: image entry id={entry.get('id')}"
        if "file_name" not in entry or "caption" not in entry:
            raise ValueError(f"{where}: needs 'file_name' and 'caption'")
        record = by_file.setdefault(
            entry["file_name"],
            {
                "file_name": os.path.join(image_root, entry["file_name"]),
                "image_id": entry.get("original_img_id", entry.get("id")),
                "captions": [],
            },
        )
        for key in ("height", "width"):
            if key in entry:
                record[key] = entry[key]
        record["captions"] += _captions(entry["caption"], where)
    records = list(by_file.values())
    for r in records:
        if dataset_name is not None:
            r["dataset_name"] = dataset_name
    logger.info("Loaded %d retrieval images from %s", len(records), json_file)
    return records


def register_caption_retrieval(name, json_file, image_root, kind="caption_json", split="test"):
    """Register a retrieval set (lazy: nothing is read now).

    Args:
        kind (str): "caption_json" (Karpathy split file or list) or "grounding_json" (MDETR).
        split (str): the Karpathy split kept.
    """
    if kind == "caption_json":
        DatasetCatalog.register(
            name, lambda: load_caption_retrieval_json(json_file, image_root, name, split)
        )
    elif kind == "grounding_json":
        DatasetCatalog.register(name, lambda: load_grounding_captions(json_file, image_root, name))
    else:
        raise ValueError(f"retrieval set {name!r}: unknown kind {kind!r}")
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="retrieval"
    )


def register_all_retrieval(root):
    for name, (json_file, image_root, kind, split) in RETRIEVAL_SETS.items():
        register_caption_retrieval(
            name, os.path.join(root, json_file), os.path.join(root, image_root), kind, split
        )


if "glip_synth_val_retrieval" not in DatasetCatalog.list():
    register_all_retrieval(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
