"""AP / AP50 over a subset of categories (glip_synth's held-out combinations) on a hand-made
evaluation: three categories, two in the group, values worked out by hand below."""

import json
import math

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from glip_d2.data.synthetic import HELDOUT_CLASSES, HELDOUT_GROUP
from glip_d2.evaluation import GLIPCOCOEvaluator, category_group_metrics, category_subset_ap

# json ids 1 ("square"), 2 ("star") and 5 ("circle"); boxes xywh on 128x128 images.
GT = [
    (1, 2, [10, 10, 20, 20]),
    (1, 5, [50, 50, 20, 20]),
    (1, 1, [0, 60, 30, 30]),
    (2, 2, [30, 30, 20, 20]),
    (2, 5, [5, 5, 40, 40]),
]
NAMES = {1: "square", 2: "star", 5: "circle"}
# (image, category, box, score)
DETS = [
    # star: hit, false positive, hit -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated
    # 1 for the 51 recall points <= 0.5 and 2/3 for the 50 above: AP = AP50 = (51 + 100/3) / 101.
    (1, 2, [10, 10, 20, 20], 0.9),
    (2, 2, [80, 80, 10, 10], 0.8),
    (2, 2, [30, 30, 20, 20], 0.7),
    # circle: image 1's box shifted 4 px (IoU 320/480 = 2/3) ranks first, image 2's is exact.
    # IoU 0.50-0.65 (4 thresholds): both hits, AP 1. IoU 0.70-0.95 (6): a false positive, then
    # recall 1/2 at precision 1/2: 51 points at 1/2 -> 25.5/101. AP50 = 100.
    (1, 5, [54, 50, 20, 20], 0.9),
    (2, 5, [5, 5, 40, 40], 0.6),
    # square (outside the group): a miss, AP 0.
    (1, 1, [100, 0, 20, 20], 0.5),
]
STAR = 100 * (51 + 100 / 3) / 101  # 83.498...
CIRCLE_AP = 100 * (4 + 6 * 25.5 / 101) / 10  # 55.148...
GROUP = {"shapes": ["star", "circle"]}


def _gt_json():
    return {
        "images": [{"id": i, "width": 128, "height": 128, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "annotations": [
            {"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3]}
            | {"iscrowd": 0}
            for k, (im, c, b) in enumerate(GT)
        ],
        "categories": [{"id": c, "name": n} for c, n in NAMES.items()],
    }


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("groups") / "gt.json"
    path.write_text(json.dumps(_gt_json()))
    return path


def _coco_eval(gt_file, cat_ids=None):
    gt = COCO(str(gt_file))
    dt = gt.loadRes(
        [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in DETS]
    )
    ev = COCOeval(gt, dt, "bbox")
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def test_subset_ap_hand_computed(gt_file):
    res = category_subset_ap(_coco_eval(gt_file), [2, 5])
    assert res["per_category"][2]["AP"] == pytest.approx(STAR, abs=1e-6)
    assert res["per_category"][2]["AP50"] == pytest.approx(STAR, abs=1e-6)
    assert res["per_category"][5]["AP"] == pytest.approx(CIRCLE_AP, abs=1e-6)
    assert res["per_category"][5]["AP50"] == pytest.approx(100.0, abs=1e-6)
    assert res["AP"] == pytest.approx((STAR + CIRCLE_AP) / 2, abs=1e-6)  # 69.32
    assert res["AP50"] == pytest.approx((STAR + 100) / 2, abs=1e-6)  # 91.75
    # The split average includes the missed square: the subset is not the split's figure.
    all_cats = category_subset_ap(_coco_eval(gt_file), [1, 2, 5])
    assert all_cats["AP50"] == pytest.approx((STAR + 100 + 0) / 3, abs=1e-6)


def test_subset_ap_equals_cocoeval_restricted_to_the_ids(gt_file):
    restricted = _coco_eval(gt_file, cat_ids=[2, 5])
    res = category_subset_ap(_coco_eval(gt_file), [2, 5])
    assert res["AP"] == pytest.approx(100 * restricted.stats[0], abs=1e-9)
    assert res["AP50"] == pytest.approx(100 * restricted.stats[1], abs=1e-9)


def test_subset_ap_rejects_unknown_ids_and_names(gt_file):
    ev = _coco_eval(gt_file)
    with pytest.raises(ValueError, match=r"category ids \[9\]"):
        category_subset_ap(ev, [2, 9])
    with pytest.raises(ValueError, match="'triangle'"):
        category_group_metrics(ev, {"shapes": ["star", "triangle"]}, {"star": 2, "circle": 5})


def test_group_metrics_nan_without_detections():
    out = category_group_metrics(None, GROUP, {"star": 2, "circle": 5})
    assert set(out) == {"AP-shapes", "AP50-shapes", "AP50-star", "AP50-circle"}
    assert all(math.isnan(v) for v in out.values())


def test_coco_evaluator_reports_group(gt_file, tmp_path):
    name = "glip_test_category_groups"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    ids = sorted(NAMES)
    MetadataCatalog.get(name).set(
        json_file=str(gt_file),
        evaluator_type="coco",
        thing_classes=[NAMES[c] for c in ids],
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(ids)},
        eval_category_groups=GROUP,
    )
    evaluator = GLIPCOCOEvaluator(name, output_dir=str(tmp_path))
    evaluator.reset()
    for img in (1, 2):
        dets = [d for d in DETS if d[0] == img]
        inst = Instances((128, 128))
        # legacy inclusive boxes: the evaluator exports w = x2 - x1 + 1
        inst.pred_boxes = Boxes(
            torch.tensor([[x, y, x + w - 1, y + h - 1] for _, _, (x, y, w, h), _ in dets])
        )
        inst.scores = torch.tensor([s for *_, s in dets])
        inst.pred_classes = torch.tensor([ids.index(c) for _, c, _, _ in dets])
        evaluator.process([{"image_id": img}], [{"instances": inst}])
    res = evaluator.evaluate()["bbox"]
    assert res["AP-shapes"] == pytest.approx((STAR + CIRCLE_AP) / 2, abs=1e-4)
    assert res["AP50-shapes"] == pytest.approx((STAR + 100) / 2, abs=1e-4)
    assert res["AP50-star"] == pytest.approx(STAR, abs=1e-4)
    assert res["AP50-circle"] == pytest.approx(100.0, abs=1e-4)
    assert res["AP-circle"] == pytest.approx(CIRCLE_AP, abs=1e-4)  # D2's own per-category AP
    assert res["AP50"] == pytest.approx((STAR + 100) / 3, abs=1e-4)


def test_glip_synth_heldout_split_names_its_group():
    meta = MetadataCatalog.get("glip_synth_test_heldout")
    assert meta.eval_category_groups == {
        HELDOUT_GROUP: ["blue star", "yellow circle", "purple triangle"]
    }
    assert set(HELDOUT_CLASSES) <= set(meta.thing_classes)
    assert MetadataCatalog.get("glip_synth_val").get("eval_category_groups", None) is None
