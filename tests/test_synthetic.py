"""glip_synth generator (datasets/prepare_glip_synth.py): determinism, held-out combinations,
spans, ensure."""

import hashlib
import json
import os

import pytest

from datasets.prepare_glip_synth import ensure_glip_synth, generate_glip_synth
from glip_d2.data.synthetic import ALL_CLASSES, HELDOUT, SEEN_CLASSES

COUNTS = {"train": 10, "val": 4, "test_heldout": 6}
HELDOUT_IDS = {ALL_CLASSES.index(f"{c} {s}") + 1 for c, s in HELDOUT}


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "glip_synth")
    generate_glip_synth(root, COUNTS, seed=3)
    return root


def _load(root, name):
    with open(os.path.join(root, "annotations", name)) as f:
        return json.load(f)


def test_deterministic(synth, tmp_path):
    again = str(tmp_path / "again")
    generate_glip_synth(again, COUNTS, seed=3)
    assert _digest(again) == _digest(synth)
    other = str(tmp_path / "other")
    generate_glip_synth(other, COUNTS, seed=4)
    assert _digest(other) != _digest(synth)


def test_layout_and_counts(synth):
    assert len(ALL_CLASSES) == 20 and len(SEEN_CLASSES) == 17
    for split, n in COUNTS.items():
        coco = _load(synth, f"instances_{split}.json")
        assert len(coco["images"]) == n
        assert len(os.listdir(os.path.join(synth, "images", split))) == n
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert w >= 20 and h >= 20 and x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
    meta = json.load(open(os.path.join(synth, "meta.json")))
    assert meta["heldout"] == ["blue star", "yellow circle", "purple triangle"]


def test_heldout_combinations(synth):
    for split in ("train", "val"):
        coco = _load(synth, f"instances_{split}.json")
        assert {c["name"] for c in coco["categories"]} == set(SEEN_CLASSES)
        assert not {a["category_id"] for a in coco["annotations"]} & HELDOUT_IDS
    coco = _load(synth, "instances_test_heldout.json")
    assert len(coco["categories"]) == 20
    per_image = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], set()).add(a["category_id"])
    assert len(per_image) == COUNTS["test_heldout"]
    assert all(ids & HELDOUT_IDS for ids in per_image.values())


def test_grounding_spans_name_the_boxes(synth):
    coco = _load(synth, "instances_train.json")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = {}
    for a in coco["annotations"]:
        boxes.setdefault(a["image_id"], {})[tuple(a["bbox"])] = names[a["category_id"]]
    g = _load(synth, "grounding_train.json")
    entries = {e["id"]: e for e in g["images"]}
    relational = 0
    for a in g["annotations"]:
        entry = entries[a["image_id"]]
        ((s, e),) = a["tokens_positive"]
        text = entry["caption"][s:e]
        assert text.endswith(boxes[entry["original_img_id"]][tuple(a["bbox"])])
        relational += text.startswith("the ")
    assert relational > 0
    assert len({e["original_img_id"] for e in g["images"]}) == COUNTS["train"]


def test_ensure_reuses_existing(tmp_path):
    root = str(tmp_path / "glip_synth")
    assert ensure_glip_synth(root, COUNTS, seed=1) == root
    stamp = os.path.getmtime(os.path.join(root, "meta.json"))
    ensure_glip_synth(root, COUNTS, seed=1)
    assert os.path.getmtime(os.path.join(root, "meta.json")) == stamp
