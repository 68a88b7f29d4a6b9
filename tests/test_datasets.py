"""Dataset loaders/registrations and the mixed train loader."""

import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import BoxMode

from glip_d2.data.build import get_grounding_dataset_dicts, mixing_repeat_factors
from glip_d2.data.datasets import (
    load_mdetr_json,
    load_pseudo_label_captions,
    load_region_descriptions,
    register_grounding_coco,
    register_mdetr_grounding,
    register_pseudo_label_captions,
    register_region_descriptions,
)

MDETR = {
    "images": [
        {
            "id": 1,
            "file_name": "a.jpg",
            "height": 100,
            "width": 120,
            "caption": "a dog left of a cat",
            "data_source": "vg",
            "tokens_positive_eval": [[[0, 5]], [[14, 19]]],
            "phrase_ids": [0, 1],
            "sentence_id": 0,
            "original_img_id": 9,
        },
        {
            "id": 2,
            "file_name": "b.jpg",
            "height": 50,
            "width": 60,
            "caption": "x",
            "data_source": "coco",
        },
    ],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "bbox": [1, 2, 30, 40],
            "tokens_positive": [[0, 5]],
            "category_id": 1,
        },
        {
            "id": 2,
            "image_id": 1,
            "bbox": [50, 2, 30, 40],
            "tokens_positive": [[14, 19]],
            "category_id": 1,
        },
        {
            "id": 3,
            "image_id": 2,
            "bbox": [5, 5, 5, 5],
            "tokens_positive": [[0, 1]],
            "category_id": 1,
        },
    ],
    "categories": [{"id": 1, "name": "object"}],
}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_mdetr_round_trip(tmp_path):
    path = _write(tmp_path, "mdetr.json", MDETR)
    roots = {"vg": "/vg", "coco": "/coco"}
    records = load_mdetr_json(path, roots, "mdetr_test", exclude_sources=("coco",))
    assert len(records) == 1
    r = records[0]
    assert r["file_name"] == "/vg/a.jpg" and (r["height"], r["width"]) == (100, 120)
    assert r["caption"] == "a dog left of a cat" and r["dataset_name"] == "mdetr_test"
    assert r["tokens_positive_eval"] == [[[0, 5]], [[14, 19]]] and r["original_img_id"] == 9
    assert [a["bbox"] for a in r["annotations"]] == [[1, 2, 30, 40], [50, 2, 30, 40]]
    assert [a["tokens_positive"] for a in r["annotations"]] == [[[0, 5]], [[14, 19]]]
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in r["annotations"])
    assert len(load_mdetr_json(path, roots)) == 2
    assert load_mdetr_json(path, roots)[1]["file_name"] == "/coco/b.jpg"


def test_mdetr_errors(tmp_path):
    bad = json.loads(json.dumps(MDETR))
    bad["annotations"][0]["tokens_positive"] = [[0, 50]]
    path = _write(tmp_path, "bad.json", bad)
    with pytest.raises(ValueError, match=r"bad.json.*annotation id=1.*outside the caption"):
        load_mdetr_json(path, "/img")
    with pytest.raises(ValueError, match="data_source 'vg'"):
        load_mdetr_json(path, {"coco": "/c"})


def test_registration_is_lazy(tmp_path):
    missing = str(tmp_path / "missing.json")
    register_mdetr_grounding("test_lazy_mdetr", missing, str(tmp_path))
    register_grounding_coco("test_lazy_coco", missing, str(tmp_path))
    assert MetadataCatalog.get("test_lazy_mdetr").json_file == missing
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get("test_lazy_mdetr")
    for name in ("glip_synth_train", "flickr30k_separate_train", "mixed_train_no_coco"):
        assert name in DatasetCatalog.list()


def test_region_descriptions(tmp_path):
    data = [
        {
            "id": 5,
            "regions": [
                {
                    "region_id": 50,
                    "phrase": " man riding a horse ",
                    "x": 1,
                    "y": 2,
                    "width": 3,
                    "height": 4,
                },
                {"region_id": 51, "phrase": "  ", "x": 1, "y": 2, "width": 3, "height": 4},
            ],
        }
    ]
    records = load_region_descriptions(_write(tmp_path, "vg.json", data), "/vg")
    assert len(records) == 1
    r = records[0]
    assert r["file_name"] == "/vg/5.jpg" and r["caption"] == "man riding a horse"
    assert r["annotations"][0]["tokens_positive"] == [[0, 18]]
    assert r["annotations"][0]["bbox"] == [1, 2, 3, 4]


def test_pseudo_label_captions(tmp_path):
    data = [
        {
            "file_name": "c1.jpg",
            "caption": "a red bus on a road",
            "height": 10,
            "width": 10,
            "entities": [
                {
                    "tokens_positive": [[2, 9]],
                    "boxes": [[0, 0, 5, 5], [1, 1, 6, 6]],
                    "scores": [0.9, 0.3],
                },
                {"tokens_positive": [[13, 19]], "boxes": [[0, 5, 9, 9]], "scores": [0.5]},
            ],
        },
        {
            "file_name": "c2.jpg",
            "caption": "a tree",
            "entities": [{"tokens_positive": [[2, 6]], "boxes": [[0, 0, 5, 5]], "scores": [0.4]}],
        },
    ]
    records = load_pseudo_label_captions(_write(tmp_path, "cap.json", data), "/img", conf=0.5)
    assert [r["file_name"] for r in records] == ["/img/c1.jpg"]  # c2 has no box over 0.5
    annos = records[0]["annotations"]
    assert [a["bbox"] for a in annos] == [[0, 0, 5, 5]]  # 0.3 and 0.5 (not > 0.5) dropped
    assert annos[0]["tokens_positive"] == [[2, 9]] and annos[0]["bbox_mode"] == BoxMode.XYXY_ABS
    assert len(load_pseudo_label_captions(_write(tmp_path, "c.json", data), "/i", conf=0.2)) == 2


def test_region_and_caption_sets_register_as_user_api(tmp_path):
    """No config key names these sets: a user registers them, then lists them in
    DATASETS.TRAIN. Registration is lazy and the records carry the dataset name."""
    regions = [
        {"id": 5, "regions": [{"phrase": "a horse", "x": 1, "y": 2, "width": 3, "height": 4}]}
    ]
    captions = [
        {
            "file_name": "c1.jpg",
            "caption": "a red bus",
            "entities": [{"tokens_positive": [[2, 9]], "boxes": [[0, 0, 5, 5]], "scores": [0.9]}],
        }
    ]
    vg = _write(tmp_path, "vg_user.json", regions)
    cap = _write(tmp_path, "cap_user.json", captions)
    register_region_descriptions("test_user_regions", vg, "/vg")
    register_pseudo_label_captions("test_user_captions", cap, "/img", conf=0.95)
    assert MetadataCatalog.get("test_user_regions").json_file == vg
    (record,) = DatasetCatalog.get("test_user_regions")
    assert record["caption"] == "a horse" and record["dataset_name"] == "test_user_regions"
    assert DatasetCatalog.get("test_user_captions") == []  # conf 0.95 drops the only box
    records, sizes = get_grounding_dataset_dicts(["test_user_regions"])
    assert sizes == [1] and records[0]["file_name"] == "/vg/5.jpg"


def test_mixing_repeat_factors():
    factors = mixing_repeat_factors([10, 30], [1, 1])
    assert factors.shape == (40,)
    assert factors[0].item() == pytest.approx(2.0) and factors[10].item() == pytest.approx(2 / 3)
    assert factors.sum().item() == pytest.approx(40.0)
    sampler = RepeatFactorTrainingSampler(mixing_repeat_factors([10, 30], [3, 1]), seed=0)
    it = iter(sampler)
    draws = torch.tensor([next(it) for _ in range(4000)])
    assert (draws < 10).float().mean().item() == pytest.approx(0.75, abs=0.04)
    with pytest.raises(ValueError, match="2 entries for 3 datasets"):
        mixing_repeat_factors([1, 2, 3], [1, 1])
    with pytest.raises(ValueError, match="positive"):
        mixing_repeat_factors([1, 2], [1, 0])


def test_mixed_loader_on_synth(tmp_path):
    from detectron2.config import get_cfg

    from datasets.prepare_glip_synth import ensure_glip_synth
    from glip_d2.config import add_glip_config
    from glip_d2.data import build_grounding_train_loader
    from glip_d2.data.synthetic import SEEN_CLASSES

    root = ensure_glip_synth(
        str(tmp_path / "glip_synth"), {"train": 6, "val": 1, "test_heldout": 1}
    )
    det, ground = "test_mix_synth_det", "test_mix_synth_grounding"
    register_grounding_coco(
        det,
        os.path.join(root, "annotations", "instances_train.json"),
        os.path.join(root, "images", "train"),
        metadata={"thing_classes": list(SEEN_CLASSES)},
    )
    register_mdetr_grounding(
        ground,
        os.path.join(root, "annotations", "grounding_train.json"),
        os.path.join(root, "images", "train"),
    )
    records, sizes = get_grounding_dataset_dicts([det, ground])
    assert sizes[0] == 6 and sizes[1] >= 6 and len(records) == sum(sizes)
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bundled-minilm"
    cfg.DATASETS.TRAIN = (det, ground)
    cfg.DATASETS.GLIP.TRAIN_RATIOS = [1.0, 1.0]
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 1
    batch = next(iter(build_grounding_train_loader(cfg)))
    assert len(batch) == 4
    for d in batch:
        assert d["image"].shape == (3, 128, 128) and d["caption"]
        inst = d["instances"]
        assert len(inst) > 0 and inst.gt_classes.max().item() < len(d["phrase_spans"])
        assert d["dataset_name"] in (det, ground)


def test_glip_novel_domain(tmp_path):
    """The transfer experiment's new domain: its 9 classes, shapes filled with their colour,
    and a deterministic generator."""
    import numpy as np
    from PIL import Image

    from datasets.prepare_glip_novel import ensure_glip_novel
    from glip_d2.data.synthetic import ALL_CLASSES, NOVEL_CLASSES, NOVEL_COLORS

    assert len(NOVEL_CLASSES) == 9 and not set(NOVEL_CLASSES) & set(ALL_CLASSES)
    root = ensure_glip_novel(str(tmp_path / "a"), {"train": 5, "val": 2})
    coco = json.load(open(os.path.join(root, "annotations", "instances_train.json")))
    assert [c["name"] for c in coco["categories"]] == NOVEL_CLASSES
    assert len(coco["images"]) == 5 and coco["annotations"]
    for ann in coco["annotations"]:
        image = np.asarray(
            Image.open(os.path.join(root, "images", "train", f"{ann['image_id'] - 1:06d}.jpg"))
        )
        x, y, w, h = ann["bbox"]
        colour = NOVEL_CLASSES[ann["category_id"] - 1].split()[0]
        centre = image[int(y + h / 2), int(x + w / 2)].astype(int)
        # jitter +-15 per channel plus JPEG; an overlapping later shape may cover the centre
        covered = any(
            _inside(b["bbox"], x + w / 2, y + h / 2)
            for b in coco["annotations"]
            if b["image_id"] == ann["image_id"] and b["id"] > ann["id"]
        )
        if not covered:
            assert np.abs(centre - np.array(NOVEL_COLORS[colour])).max() <= 30, (ann, centre)
    again = ensure_glip_novel(str(tmp_path / "b"), {"train": 5, "val": 2})
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(root, "images", split))):
            a = open(os.path.join(root, "images", split, name), "rb").read()
            b = open(os.path.join(again, "images", split, name), "rb").read()
            assert a == b, (split, name)


def _inside(bbox, px, py):
    x, y, w, h = bbox
    return x <= px < x + w and y <= py < y + h
