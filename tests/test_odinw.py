"""ODinW registrations: official layouts on a tiny fixture, prompt overrides, missing files,
and the per-set table with the average through GLIPTrainer.test."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from torch import nn

from glip_d2.config import add_glip_config
from glip_d2.data.datasets.odinw import (
    odinw_dataset_names,
    odinw_split_files,
    register_odinw,
)
from glip_d2.data.datasets.odinw_sets import ODINW_SETS, OdinwSet
from glip_d2.data.mapper import GroundingDatasetMapper
from glip_d2.engine import GLIPTrainer

# A: flat "export" layout, json names renamed by the override; B: split folders with a
# minival split and a CAPTION_PROMPT.
SET_A = OdinwSet("TinyFlat_export", "odinw/TinyFlat/export", "val", True, ("cat", "dog"),
                 layout="flat")  # fmt: skip
SET_B = OdinwSet("TinyHoles", "odinw/TinyHoles", "minival", False, ("pothole",),
                 (("there are some ", "holes", " on the road"),))  # fmt: skip
JSON_NAMES = {SET_A.name: ["kitties", "doggos"], SET_B.name: ["pothole"]}
# per image: list of (x, y, w, h, json category id)
BOXES = [[(4, 6, 20, 18, 1), (30, 30, 25, 20, 2)], [(10, 10, 30, 30, 1)]]


def _write_split(root, spec, split):
    json_file, image_dir = odinw_split_files(spec, split, str(root))
    images, annos = [], []
    for i, boxes in enumerate(BOXES):
        file_name = f"{split}_{i}.jpg"
        (image_dir_path := root / image_dir.split(str(root) + "/")[1]).mkdir(
            parents=True, exist_ok=True
        )
        cv2.imwrite(str(image_dir_path / file_name), np.full((64, 80, 3), 40 * i, np.uint8))
        images.append({"id": i + 1, "file_name": file_name, "height": 64, "width": 80})
        for x, y, w, h, c in boxes:
            c = min(c, len(spec.categories))
            annos.append({"id": len(annos) + 1, "image_id": i + 1, "bbox": [x, y, w, h],
                          "area": w * h, "iscrowd": 0, "category_id": c})  # fmt: skip
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(JSON_NAMES[spec.name])]
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annos, "categories": cats}, f)


@pytest.fixture(scope="module")
def odinw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    for spec, splits in ((SET_A, ("train", "val")), (SET_B, ("minival",))):
        for split in splits:
            _write_split(root, spec, split)
    if "odinwtest_TinyFlat_export_val" not in DatasetCatalog.list():
        register_odinw(str(root), sets=[SET_A, SET_B], collections=("odinwtest", "odinw13"))
    return root


def _cfg(tmp_path):
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bundled-minilm"
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 384
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 80
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def test_official_table_and_names():
    assert len(ODINW_SETS) == 35 and sum(s.odinw13 for s in ODINW_SETS) == 13
    assert len({s.name for s in ODINW_SETS}) == 35
    for s in ODINW_SETS:
        assert not s.caption_prompt or len(s.caption_prompt) == len(s.categories), s.name
    names = odinw_dataset_names("odinw13")
    assert len(names) == 13 and "odinw13_EgoHands_generic_minival" in names
    assert "odinw13_PascalVOC_val" in names
    assert all(n in DatasetCatalog.list() for n in odinw_dataset_names("odinw35", "test"))
    voc = MetadataCatalog.get("odinw35_PascalVOC_test")
    assert voc.json_file.endswith("odinw/PascalVOC/valid/annotations_without_background.json")
    shot = MetadataCatalog.get("odinw13_pistols_export_train_shot5_seed30")
    assert shot.json_file.endswith("odinw/pistols/export/fewshot_train_shot5_seed30.json")
    assert shot.evaluator_type == "odinw"
    with pytest.raises(ValueError, match="unknown ODinW collection"):
        odinw_dataset_names("odinw14")


def test_missing_data_fails_on_load_naming_the_file():
    # Registered at import from $DETECTRON2_DATASETS, where no ODinW data exists here.
    with pytest.raises(FileNotFoundError, match=r"odinw/pothole/valid/annotations_without_bac"):
        DatasetCatalog.get("odinw35_pothole_val")


def test_fixture_layouts_load_with_prompt_overrides(odinw_root, tmp_path):
    meta_a = MetadataCatalog.get("odinwtest_TinyFlat_export_val")
    assert meta_a.json_file == str(odinw_root / "odinw/TinyFlat/export/val_annotations_"
                                   "without_background.json")  # fmt: skip
    records = DatasetCatalog.get("odinwtest_TinyFlat_export_val")
    assert len(records) == 2 and records[0]["dataset_name"] == "odinwtest_TinyFlat_export_val"
    assert meta_a.thing_classes == ["kitties", "doggos"]  # names come from the json
    assert meta_a.prompt_overrides == {"kitties": {"name": "cat"}, "doggos": {"name": "dog"}}
    DatasetCatalog.get("odinwtest_TinyHoles_minival")
    meta_b = MetadataCatalog.get("odinwtest_TinyHoles_minival")
    assert meta_b.prompt_overrides == {
        "pothole": {"prefix": "there are some ", "name": "holes", "suffix": " on the road"}
    }
    # the odinw13 collection has no CAPTION_PROMPT (official configs/odinw_13)
    DatasetCatalog.get("odinw13_TinyFlat_export_val")
    assert "odinw13_TinyHoles_minival" not in DatasetCatalog.list()

    mapper = GroundingDatasetMapper(_cfg(tmp_path), is_train=False)
    out = mapper(records[0])
    assert out["caption"] == "cat. dog" and out["phrase_spans"] == [[[0, 3]], [[5, 8]]]
    out = mapper(DatasetCatalog.get("odinwtest_TinyHoles_minival")[0])
    assert out["caption"] == "there are some holes on the road"
    assert out["phrase_spans"] == [[[15, 20]]]


def test_wrong_json_ids_are_named(odinw_root, tmp_path):
    spec = SET_A._replace(name="TinyWrong", categories=("cat", "dog", "cow"))
    register_odinw(str(odinw_root), sets=[spec], collections=("odinwwrong",))
    with pytest.raises(ValueError, match="TinyWrong.*ids \\[1, 2\\].*ids 1..3"):
        DatasetCatalog.get("odinwwrong_TinyWrong_val")


class GroundTruthModel(nn.Module):
    """Predicts each GT box exactly, except every second box of the sets named in ``drop``."""

    def __init__(self, drop=()):
        super().__init__()
        self.drop = drop
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, batched_inputs):
        outputs = []
        for inp in batched_inputs:
            meta = MetadataCatalog.get(inp["dataset_name"])
            id_map = meta.thing_dataset_id_to_contiguous_id
            boxes = BOXES[inp["image_id"] - 1]
            if inp["dataset_name"] in self.drop:
                boxes = boxes[::2] if inp["image_id"] == 1 else []
            inst = Instances((inp["height"], inp["width"]))
            xyxy = [[x, y, x + w - 1, y + h - 1] for x, y, w, h, _ in boxes]
            inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.full((len(boxes),), 0.9)
            inst.pred_classes = torch.tensor(
                [id_map[min(c, len(id_map))] for *_, c in boxes], dtype=torch.int64
            )
            outputs.append({"instances": inst})
        return outputs


def test_per_set_table_and_average_through_the_trainer(odinw_root, tmp_path, caplog):
    names = ("odinwtest_TinyFlat_export_val", "odinwtest_TinyHoles_minival")
    cfg = _cfg(tmp_path)
    cfg.DATASETS.TEST = names
    logging.getLogger("glip_d2").setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="glip_d2.evaluation.odinw"):
        results = GLIPTrainer.test(cfg, GroundTruthModel(drop=(names[1],)))
    assert results[names[0]]["bbox"]["AP"] == pytest.approx(100.0)
    # one of the three holes found: precision 1 up to recall 1/3 -> 34 of COCO's 101 points
    assert results[names[1]]["bbox"]["AP"] == pytest.approx(100 * 34 / 101)
    average = results["average"]["bbox"]
    assert average["AP"] == pytest.approx((100 + 100 * 34 / 101) / 2)
    assert average["num_datasets"] == 2 and average["AP50"] == pytest.approx(average["AP"])
    assert "| odinwtest_TinyFlat_export_val | 100.00 | 100.00 | 100.00 |" in caplog.text
    assert "| average (2)                   |  66.83 |  66.83 |  66.83 |" in caplog.text


def test_fixed_training_prompt_is_the_evaluation_prompt(odinw_root, tmp_path):
    cfg = _cfg(tmp_path)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 80
    cfg.INPUT.GLIP.FLIP_PROB = 0.0
    cfg.DATASETS.GLIP.FIXED_TRAIN_PROMPT = True
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    out = mapper(DatasetCatalog.get("odinwtest_TinyFlat_export_train")[0])
    assert out["caption"] == "cat. dog" and out["phrase_names"] == ["kitties", "doggos"]
    assert out["instances"].gt_classes.tolist() == [0, 1]
    out = mapper(DatasetCatalog.get("odinwtest_TinyHoles_minival")[0])
    assert out["caption"] == "there are some holes on the road"
    assert out["instances"].gt_classes.tolist() == [0, 0]
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 4
    with pytest.raises(ValueError, match="FIXED_TRAIN_PROMPT.*exceeds.*MAX_QUERY_LEN=4"):
        GroundingDatasetMapper(cfg, is_train=True)(
            DatasetCatalog.get("odinwtest_TinyHoles_minival")[0]
        )


def test_register_coco_config_key(odinw_root, tmp_path):
    from glip_d2.data.datasets.coco import register_coco_from_cfg

    json_file, image_root = odinw_split_files(SET_A, "val", str(odinw_root))
    cfg = _cfg(tmp_path)
    cfg.DATASETS.GLIP.REGISTER_COCO = [["glip_test_custom_val", json_file, image_root]]
    register_coco_from_cfg(cfg)
    register_coco_from_cfg(cfg)  # idempotent
    assert len(DatasetCatalog.get("glip_test_custom_val")) == 2
    meta = MetadataCatalog.get("glip_test_custom_val")
    assert meta.evaluator_type == "coco" and meta.thing_classes == ["kitties", "doggos"]
    cfg.DATASETS.GLIP.REGISTER_COCO = [["glip_test_custom_val", "other.json", image_root]]
    with pytest.raises(ValueError, match="already registered"):
        register_coco_from_cfg(cfg)
    cfg.DATASETS.GLIP.REGISTER_COCO = [["only_a_name"]]
    with pytest.raises(ValueError, match=r"REGISTER_COCO\[0\] must be \[name, json_file"):
        register_coco_from_cfg(cfg)
