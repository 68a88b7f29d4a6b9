"""Evaluators against hand-computed cases (COCO +1 export, LVIS, Flickr recall, RefCOCO)."""

import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from glip_d2.config import add_glip_config
from glip_d2.evaluation import (
    FlickrRecallEvaluator,
    GLIPCOCOEvaluator,
    GLIPLVISEvaluator,
    RefExpAccuracyEvaluator,
    average_over_datasets,
    box_iou_xyxy,
    build_glip_evaluator,
    legacy_instances_to_coco_json,
    top_k_per_category,
)

# Two images, three categories (json ids 1, 3, 7); boxes in COCO xywh.
GT = {
    1: [(1, [10, 20, 30, 40]), (3, [50, 60, 20, 10])],
    2: [(7, [0, 0, 64, 32]), (1, [70, 5, 25, 25]), (3, [5, 40, 12, 18])],
}
CATS = [1, 3, 7]


def _instances(boxes, scores, classes, size=(128, 128)):
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _legacy_xyxy(xywh):
    x, y, w, h = xywh
    return [x, y, x + w - 1, y + h - 1]


def _register(name, records, **meta):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**meta)


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "gt.json"
    anns = []
    for img, objs in GT.items():
        for cat, box in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    data = {
        "images": [{"id": i, "width": 128, "height": 128, "file_name": f"{i}.jpg"} for i in GT],
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in CATS],
    }
    path.write_text(json.dumps(data))
    return path


def _gt_outputs(legacy=True):
    """The ground truth as model outputs, contiguous class = phrase index; boxes in the legacy
    inclusive convention (COCO path adds the pixel back) or ``x2 = x + w`` (LVIS path)."""
    contiguous = {c: i for i, c in enumerate(CATS)}
    inputs, outputs = [], []
    for img, objs in GT.items():
        inputs.append({"image_id": img})
        inst = _instances(
            [
                _legacy_xyxy(b)
                if legacy
                else BoxMode.convert(b, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
                for _, b in objs
            ],
            [0.9] * len(objs),
            [contiguous[c] for c, _ in objs],
        )
        outputs.append({"instances": inst})
    return inputs, outputs


def test_legacy_export_adds_one_pixel():
    inst = _instances([[10, 20, 39, 59]], [0.5], [2])
    (rec,) = legacy_instances_to_coco_json(inst, 4)
    assert rec["bbox"] == [10.0, 20.0, 30.0, 40.0]
    assert rec["category_id"] == 2 and rec["image_id"] == 4


def test_coco_ground_truth_as_predictions_gives_ap_100(coco_json, tmp_path):
    _register(
        "glip_test_coco",
        [],
        json_file=str(coco_json),
        evaluator_type="coco",
        thing_classes=["c1", "c3", "c7"],
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(CATS)},
    )
    cfg = add_glip_config(get_cfg())
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_glip_evaluator(cfg, "glip_test_coco")
    assert isinstance(evaluator, GLIPCOCOEvaluator)
    evaluator.reset()
    evaluator.process(*_gt_outputs())
    res = evaluator.evaluate()["bbox"]
    assert res["AP"] == pytest.approx(100.0)
    assert res["AP50"] == pytest.approx(100.0)
    # Without the +1 each box would lose one pixel of width and height: AP75 would still
    # match but exported json would differ; check the export itself.
    exported = json.loads(
        (tmp_path / "inference/glip_test_coco/coco_instances_results.json").read_text()
    )
    assert sorted(tuple(r["bbox"]) for r in exported if r["image_id"] == 1) == [
        (10.0, 20.0, 30.0, 40.0),
        (50.0, 60.0, 20.0, 10.0),
    ]


def test_coco_shifted_predictions_lower_ap(coco_json, tmp_path):
    _register(
        "glip_test_coco2",
        [],
        json_file=str(coco_json),
        evaluator_type="coco",
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(CATS)},
    )
    evaluator = GLIPCOCOEvaluator("glip_test_coco2", output_dir=str(tmp_path))
    evaluator.reset()
    inputs, outputs = _gt_outputs()
    # Image 1's class-0 box shifted by half its width: IoU 1/3 -> a miss for that category.
    outputs[0]["instances"].pred_boxes.tensor[0, [0, 2]] += 15
    outputs[0]["instances"].scores[0] = 0.5  # ranks after the other class-0 box (a hit)
    evaluator.process(inputs, outputs)
    res = evaluator.evaluate()["bbox"]
    # category 1: the hit ranks first (precision 1 up to recall 0.5), then a false positive:
    # AP = 51/101 at every IoU threshold (101-point interpolation); categories 3 and 7: 100.
    assert res["AP50"] == pytest.approx((50.4950495 + 100 + 100) / 3, abs=1e-3)


def _lvis_json(path):
    anns, imgs = [], []
    for img, objs in GT.items():
        imgs.append(
            {
                "id": img,
                "width": 128,
                "height": 128,
                "coco_url": f"http://x/{img}.jpg",
                "not_exhaustive_category_ids": [],
                "neg_category_ids": [],
            }
        )
        for cat, box in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "segmentation": [
                        [box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3]]
                    ],
                }
            )
    cats = [
        {"id": c, "name": f"c{c}", "frequency": f, "image_count": 1}
        for c, f in zip(CATS, "rcf", strict=True)
    ]
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return path


@pytest.mark.parametrize("fixed_ap", [False, True])
def test_lvis_chunked_predictions_equal_unchunked(tmp_path, fixed_ap):
    """The model concatenates per-chunk detections with global class indices; evaluating
    them per chunk-part or all at once must give the same AP (here: GT -> 100). The official
    LVIS export has no +1 (docs/OFFICIAL_BEHAVIOURS.md, 'Legacy "+1" boxes'), so the GT is
    given as ``x2 = x + w`` boxes."""
    json_file = _lvis_json(tmp_path / "lvis.json")
    _register(
        "glip_test_lvis",
        [],
        json_file=str(json_file),
        evaluator_type="lvis",
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(CATS)},
    )
    inputs, outputs = _gt_outputs(legacy=False)
    whole = GLIPLVISEvaluator("glip_test_lvis", fixed_ap=fixed_ap)
    whole.reset()
    whole.process(inputs, outputs)
    res_whole = whole.evaluate()["bbox"]

    chunked = GLIPLVISEvaluator("glip_test_lvis", fixed_ap=fixed_ap)
    chunked.reset()
    for inp, out in zip(inputs, outputs, strict=True):
        inst = out["instances"]
        # chunk 0 = classes {0, 1}, chunk 1 = class {2}, concatenated as the model does
        parts = [inst[inst.pred_classes < 2], inst[inst.pred_classes >= 2]]
        chunked.process([inp], [{"instances": Instances.cat(parts)}])
    res_chunked = chunked.evaluate()["bbox"]
    assert res_whole["AP"] == pytest.approx(100.0)
    assert res_chunked == pytest.approx(res_whole, nan_ok=True)


def test_lvis_fixed_ap_keeps_top_k_per_category():
    recs = [
        {"category_id": c, "score": s}
        for c, s in [(1, 0.1), (1, 0.9), (2, 0.5), (1, 0.5), (2, 0.2), (1, 0.7)]
    ]
    kept = top_k_per_category(recs, k=2)
    assert [(r["category_id"], r["score"]) for r in kept] == [
        (1, 0.9),
        (2, 0.5),
        (2, 0.2),
        (1, 0.7),
    ]


def test_box_iou_without_plus_one():
    iou = box_iou_xyxy([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0]])


def _flickr_records():
    xyxy = BoxMode.XYXY_ABS
    return [
        {  # phrase 0 (people): two GT boxes; phrase 1 (clothing, other): one GT box
            "image_id": 10,
            "phrase_types": [["people"], ["clothing", "other"]],
            "annotations": [
                {"bbox": [0, 0, 10, 10], "bbox_mode": xyxy, "category_id": 0},
                {"bbox": [20, 0, 30, 10], "bbox_mode": xyxy, "category_id": 0},
                {"bbox": [0, 20, 10, 40], "bbox_mode": xyxy, "category_id": 1},
            ],
        },
        {  # phrase 0 (people) has GT; phrase 1 has none and is not counted
            "image_id": 11,
            "phrase_types": ["people", "scene"],
            "annotations": [
                {"bbox": [0, 0, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
            ],
        },
    ]


def _flickr_outputs():
    # image 10, phrase 0: best box misses, 2nd hits GT #2 -> hit at R@5, not R@1
    # image 10, phrase 1: only box covers the merged region badly but hits its one GT -> R@1
    # image 11, phrase 0: 7 boxes, the 6th best hits -> R@10 and UB only
    out10 = _instances(
        [[50, 50, 60, 60], [21, 0, 30, 10], [0, 20, 10, 39]], [0.9, 0.8, 0.7], [0, 0, 1]
    )
    boxes11 = [[100, 100, 110, 110]] * 5 + [[1, 1, 20, 20], [90, 90, 95, 95]]
    out11 = _instances(boxes11, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0] * 7)
    return [{"image_id": 10}, {"image_id": 11}], [{"instances": out10}, {"instances": out11}]


def test_flickr_recall_separate_hand_computed():
    _register("glip_test_flickr", _flickr_records(), evaluator_type="flickr")
    ev = FlickrRecallEvaluator("glip_test_flickr", distributed=False)
    ev.reset()
    ev.process(*_flickr_outputs())
    res = ev.evaluate()["flickr"]
    # all: 3 phrases; R@1 = 1/3 (phrase 1 of image 10), R@5 = 2/3, R@10 = UB = 3/3
    assert res["R@1_all"] == pytest.approx(100 / 3)
    assert res["R@5_all"] == pytest.approx(200 / 3)
    assert res["R@10_all"] == pytest.approx(100.0)
    assert res["UB_all"] == pytest.approx(100.0)
    # people: image 10 phrase 0 (R@5) and image 11 phrase 0 (R@10)
    assert (res["R@1_people"], res["R@5_people"], res["R@10_people"]) == pytest.approx(
        (0.0, 50.0, 100.0)
    )
    assert res["R@1_clothing"] == pytest.approx(100.0) and res["R@1_other"] == 100.0
    assert "R@1_scene" not in res  # its phrase has no GT box


def test_flickr_recall_merged_gt():
    _register("glip_test_flickr_m", _flickr_records(), evaluator_type="flickr")
    ev = FlickrRecallEvaluator("glip_test_flickr_m", distributed=False, gt_type="merged")
    ev.reset()
    ev.process(*_flickr_outputs())
    res = ev.evaluate()["flickr"]
    # merged GT of image 10 phrase 0 is [0, 0, 30, 10]: box [21, 0, 30, 10] has IoU 0.3 -> miss,
    # so that phrase is missed at every k; the other two are unchanged.
    assert res["R@5_all"] == pytest.approx(100 / 3)
    assert res["UB_all"] == pytest.approx(200 / 3)


def test_flickr_rejects_unknown_image():
    _register("glip_test_flickr_u", _flickr_records(), evaluator_type="flickr")
    ev = FlickrRecallEvaluator("glip_test_flickr_u", distributed=False)
    ev.reset()
    ev.process([{"image_id": 99}], [{"instances": _instances([], [], [])}])
    with pytest.raises(KeyError, match="99"):
        ev.evaluate()


def test_refexp_accuracy_hand_computed():
    xyxy = BoxMode.XYXY_ABS
    records = [
        {
            "image_id": i,
            "annotations": [{"bbox": [0, 0, 10, 10], "bbox_mode": xyxy, "category_id": 0}],
        }
        for i in range(4)
    ]
    _register("glip_test_refcoco", records, evaluator_type="refcoco")
    cfg = add_glip_config(get_cfg())
    ev = build_glip_evaluator(cfg, "glip_test_refcoco")
    assert isinstance(ev, RefExpAccuracyEvaluator)
    ev._distributed = False
    ev.reset()
    hit, near, miss = [0, 0, 10, 10], [0, 0, 10, 6], [50, 50, 60, 60]  # IoU 1, 0.6, 0
    ev.process(
        [{"image_id": i} for i in range(4)],
        [
            {"instances": _instances([hit, miss], [0.9, 0.1], [0, 0])},
            {"instances": _instances([miss, near], [0.1, 0.8], [0, 0])},  # near ranks first
            {"instances": _instances([miss, hit], [0.9, 0.5], [0, 0])},  # hit is 2nd -> P@5
            {"instances": _instances([], [], [])},
        ],
    )
    res = ev.evaluate()["refexp"]
    assert res["Acc@1"] == pytest.approx(50.0)
    assert res["P@5"] == pytest.approx(75.0)
    assert res["P@10"] == pytest.approx(75.0)


def test_odinw_average_and_errors():
    results = {"a": {"bbox": {"AP": 40.0}}, "b": {"bbox": {"AP": 20.0}}}
    out = average_over_datasets(results, ["a", "b"])
    assert out["average"]["bbox"]["AP"] == pytest.approx(30.0)
    assert out["a"] == results["a"]
    with pytest.raises(KeyError, match="'c'"):
        average_over_datasets(results, ["a", "c"])


def test_unknown_evaluator_type_is_named():
    _register("glip_test_unknown", [], evaluator_type="sem_seg")
    cfg = add_glip_config(get_cfg())
    with pytest.raises(ValueError, match="glip_test_unknown.*sem_seg"):
        build_glip_evaluator(cfg, "glip_test_unknown")


def test_flickr_phrases_from_mdetr_spans():
    """MDETR records: boxes belong to phrases by their char spans, in the mapper's order."""
    caption = "a man in a red shirt and a dog"
    man, shirt, dog = [[2, 5]], [[11, 20]], [[27, 30]]
    xywh = BoxMode.XYWH_ABS
    record = {
        "image_id": 5,
        "caption": caption,
        "tokens_positive_eval": [dog, man, shirt],  # eval order differs from annotation order
        "annotations": [
            {"bbox": [0, 0, 10, 10], "bbox_mode": xywh, "tokens_positive": man, "category_id": 0},
            {
                "bbox": [0, 20, 10, 10],
                "bbox_mode": xywh,
                "tokens_positive": shirt,
                "category_id": 0,
            },
            {
                "bbox": [40, 40, 10, 10],
                "bbox_mode": xywh,
                "tokens_positive": [[27, 29]],
                "category_id": 0,
            },  # overlaps "dog"
        ],
    }
    _register("glip_test_flickr_mdetr", [record], evaluator_type="flickr")
    ev = FlickrRecallEvaluator("glip_test_flickr_mdetr", distributed=False)
    ev.reset()
    # phrase 0 = dog (hit), 1 = man (hit), 2 = shirt (box of the man: miss)
    out = _instances([[40, 40, 50, 50], [0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [0, 1, 2])
    ev.process([{"image_id": 5}], [{"instances": out}])
    res = ev.evaluate()["flickr"]
    assert res["R@1_all"] == pytest.approx(200 / 3)
    assert set(res) == {"R@1_all", "R@5_all", "R@10_all", "UB_all"}
