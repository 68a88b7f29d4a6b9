"""Datasets are checked when they are loaded, naming the file and the image (issue #13 item 6)."""

import copy
import json
import logging

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from glip_d2.data.datasets import (
    load_mdetr_json,
    load_pseudo_label_captions,
    load_region_descriptions,
    register_grounding_coco,
)
from glip_d2.data.mapper import GroundingDatasetMapper
from glip_d2.text import load_tokenizer
from glip_d2.text.positive_map import span_token_range

CAPTION = "a dog left of a cat"  # 19 characters

MDETR = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "height": 100, "width": 120, "caption": CAPTION},
        {"id": 2, "file_name": "b.jpg", "height": 50, "width": 60, "caption": "two cats"},
    ],
    "annotations": [
        {"id": 11, "image_id": 1, "bbox": [1, 2, 30, 40], "tokens_positive": [[0, 5]]},
        {"id": 12, "image_id": 1, "bbox": [50, 2, 30, 40], "tokens_positive": [[14, 19]]},
        {"id": 21, "image_id": 2, "bbox": [5, 5, 20, 20], "tokens_positive": [[0, 8]]},
    ],
}
CHECKS = "glip_d2.data.datasets.checks"


def _mdetr(tmp_path, edit=None):
    data = copy.deepcopy(MDETR)
    if edit:
        edit(data)
    path = tmp_path / "mdetr.json"
    path.write_text(json.dumps(data))
    return str(path)


def _set(key, value, image=None, anno=None):
    def edit(data):
        target = data["images"][image] if image is not None else data["annotations"][anno]
        target[key] = value

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("bbox", [1, float("nan"), 30, 40], anno=1), "id=1 .*has a NaN or infinite"),
        (_set("bbox", [1, 2, float("inf"), 40], anno=2), "id=2 .*has a NaN or infinite"),
        (_set("bbox", [50, 2, -60, 40], anno=1), r"box \[50, 2, -60, 40\] has a negative width"),
        (_set("bbox", [5, 5, 20, -1], anno=2), "has a negative height"),
        (_set("bbox", [5, 5, 20], anno=2), r"id=2 .*annotation 0: bbox \[5, 5, 20\] is not 4"),
        (_set("bbox", [500, 2, 30, 40], anno=0), "lies entirely outside the 120x100 image"),
        (_set("tokens_positive", [[5, 6]], anno=0), r"id=1.*\[\[5, 6\]\] cover only whitespace"),
        (_set("tokens_positive_eval", [[[0, 5]], [[14, 30]]], image=0),
         r"image id=1, tokens_positive_eval\[1\]: span \[14, 30\] lies outside"),
        (_set("tokens_positive", [[16, 22]], anno=1), r"span \[16, 22\] lies outside"),
    ],
)  # fmt: skip
def test_mdetr_bad_data_is_refused_at_load(tmp_path, edit, match):
    path = _mdetr(tmp_path, edit)
    with pytest.raises(ValueError, match=f"mdetr.json: .*{match}"):
        load_mdetr_json(path, "/img")


def test_small_span_overruns_are_clipped_with_one_warning(tmp_path, caplog):
    def edit(data):
        data["annotations"][1]["tokens_positive"] = [[14, 20]]  # one past "a cat"
        data["images"][0]["tokens_positive_eval"] = [[[0, 5]], [[14, 21]]]  # two past

    with caplog.at_level(logging.WARNING, logger=CHECKS):
        records = load_mdetr_json(_mdetr(tmp_path, edit), "/img")
    assert records[0]["annotations"][1]["tokens_positive"] == [[14, 19]]
    assert records[0]["tokens_positive_eval"] == [[[0, 5]], [[14, 19]]]
    warnings = [r.getMessage() for r in caplog.records if "past their caption" in r.getMessage()]
    assert len(warnings) == 1 and "2 spans ended" in warnings[0]
    # The official positive map (last token looked up at end-1, end-2, end-3) finds the same
    # tokens for the original span as for the clipped one.
    enc = load_tokenizer("bundled-minilm")(CAPTION)
    assert span_token_range(enc, 14, 21) == span_token_range(enc, 14, 19) is not None


def test_degenerate_boxes_are_counted_once_per_dataset(tmp_path, caplog):
    def edit(data):
        data["annotations"][0]["bbox"] = [1, 2, 1, 40]  # legacy width 0
        data["annotations"][1]["bbox"] = [119, 2, 30, 40]  # clipped to one column
        data["annotations"][2]["bbox"] = [5, 5, 20, 0.5]

    with caplog.at_level(logging.WARNING, logger=CHECKS):
        records = load_mdetr_json(_mdetr(tmp_path, edit), "/img")
    assert sum(len(r["annotations"]) for r in records) == 3  # kept: the mapper drops them
    warnings = [r for r in caplog.records if "no width or height left" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "3 of 3 boxes" in warnings[0].getMessage()


def test_other_loaders_check_boxes_and_spans(tmp_path):
    regions = [{"id": 5, "regions": [{"phrase": "a horse", "x": 1, "y": 2, "width": -3,
                                      "height": 4}]}]  # fmt: skip
    path = tmp_path / "vg.json"
    path.write_text(json.dumps(regions))
    with pytest.raises(ValueError, match=r"vg.json: image id=5 .*negative width \(-3\)"):
        load_region_descriptions(str(path), "/vg")
    captions = [{"file_name": "c.jpg", "caption": "a bus  here",
                 "entities": [{"tokens_positive": [[5, 7]], "boxes": [[0, 0, 5, 5]],
                               "scores": [0.9]}]}]  # fmt: skip
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(captions))
    with pytest.raises(ValueError, match=r"cap.json: image id=0 \('c.jpg'\).*only whitespace"):
        load_pseudo_label_captions(str(path), "/img")
    captions[0]["entities"][0] = {"tokens_positive": [[2, 5]], "boxes": [[9, 0, 5, 5]],
                                  "scores": [0.9]}  # fmt: skip
    path.write_text(json.dumps(captions))
    with pytest.raises(ValueError, match=r"negative width \(-4\)"):  # XYXY with x2 < x1
        load_pseudo_label_captions(str(path), "/img")


def _coco(tmp_path, name, categories, bbox=(1, 1, 3, 3)):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": list(bbox), "category_id": 1, "iscrowd": 0, "area": 9}
        ],
        "categories": categories,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    register_grounding_coco(name, str(path), str(tmp_path))
    return name


def test_coco_sets_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"empty_cats.json: the 'categories' list is empty"):
        DatasetCatalog.get(_coco(tmp_path, "empty_cats", []))
    nan = _coco(tmp_path, "nan_box", [{"id": 1, "name": "x"}], (1, float("nan"), 3, 3))
    with pytest.raises(ValueError, match=r"nan_box.json: image id=1 .*NaN or infinite"):
        DatasetCatalog.get(nan)
    ok = _coco(tmp_path, "ok_box", [{"id": 1, "name": "x"}])
    assert DatasetCatalog.get(ok)[0]["annotations"][0]["bbox"] == [1, 1, 3, 3]


def test_mapper_describes_a_negative_width(tmp_path):
    """Records that bypass the loaders (registered by hand) get the same description."""
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    record = {"file_name": str(image), "image_id": 3, "height": 40, "width": 60,
              "caption": "a cat", "annotations": [
                  {"bbox": [50, 2, -60, 20], "bbox_mode": BoxMode.XYWH_ABS,
                   "tokens_positive": [[2, 5]], "category_id": 0}]}  # fmt: skip
    mapper = GroundingDatasetMapper(True, augmentations=[T.Resize((40, 60))])
    with pytest.raises(ValueError, match=r"image_id=3\): box \[50, 2, -60, 20\] has a negative"):
        mapper(record)
