"""Steps shared by the experiment scripts (``demo/self_training.py``, ``demo/transfer.py``): a
logged subprocess, and the first images of an evaluation set as a set of its own (their
``--quick`` checks)."""

import json
import subprocess
import sys
from pathlib import Path

from detectron2.data import MetadataCatalog

from ..data.datasets import register_grounding_coco

__all__ = ["first_images_subset", "run_logged"]


def run_logged(cmd, log, cwd):
    """Run ``python CMD`` in ``cwd`` with its output appended to ``log``; a failure raises a
    RuntimeError that names the log."""
    cmd = [sys.executable, *map(str, cmd)]
    print("$", " ".join(cmd[1:]), f">> {log}", flush=True)
    with open(log, "a") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed ({done.returncode}); see {log}")


def first_images_subset(name, count, json_dir):
    """Register ``{name}_first{count}``: the first ``count`` images of the COCO-format set
    ``name`` with their annotations, written to ``json_dir``; same classes and id map.

    Returns:
        str: the subset's dataset name.
    """
    meta = MetadataCatalog.get(name)
    coco = json.loads(Path(meta.json_file).read_text())
    coco["images"] = coco["images"][:count]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    subset, path = f"{name}_first{count}", Path(json_dir) / f"{name}_first{count}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    if subset not in MetadataCatalog.list():
        keep = ("thing_classes", "thing_dataset_id_to_contiguous_id")
        register_grounding_coco(
            subset, str(path), meta.image_root, metadata={k: meta.get(k) for k in keep}
        )
    return subset
