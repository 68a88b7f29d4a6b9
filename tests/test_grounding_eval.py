"""Flickr30K / RefExp evaluators on what they did not see, entities mentioned twice, and Flickr
phrase types from Flickr30K Entities' Sentences files (issue #13 item 4)."""

import json

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from glip_d2.data.datasets import read_flickr_sentences, register_mdetr_grounding
from glip_d2.evaluation import FlickrRecallEvaluator, RefExpAccuracyEvaluator

XYXY = BoxMode.XYXY_ABS


def _instances(boxes, scores, classes):
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _register(name, records):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)


def _one_box_records(n):
    box = {"bbox": [0, 0, 10, 10], "bbox_mode": XYXY, "category_id": 0}
    return [{"image_id": i, "annotations": [dict(box)]} for i in range(n)]


@pytest.mark.parametrize("kind", ["flickr", "refexp"])
def test_missing_images_are_refused(kind):
    """Predictions for 1 of 14 images gave R@1 = 100; none at all gave {}."""
    name = f"glip_test_missing_{kind}"
    records = _one_box_records(14)
    records.append({"image_id": 99, "annotations": []})  # no GT: not required
    _register(name, records)
    cls = FlickrRecallEvaluator if kind == "flickr" else RefExpAccuracyEvaluator
    ev = cls(name, distributed=False)
    ev.reset()
    ev.process([{"image_id": 3}], [{"instances": _instances([[0, 0, 10, 10]], [0.9], [0])}])
    with pytest.raises(RuntimeError, match=r"Missing predictions: 13 of the 14 images.*0, 1, 2"):
        ev.evaluate()
    ev.reset()
    with pytest.raises(RuntimeError, match="Missing predictions: 14 of the 14"):
        ev.evaluate()
    ev.reset()
    hit = {"instances": _instances([[0, 0, 10, 10]], [0.9], [0])}
    ev.process([{"image_id": i} for i in range(14)] + [{"image_id": 99}], [hit] * 15)
    key, metric = ("flickr", "R@1_all") if kind == "flickr" else ("refexp", "Acc@1")
    assert ev.evaluate()[key][metric] == pytest.approx(100.0)


def test_entity_mentioned_twice_is_scored_for_both_mentions():
    """MDETR gives the man's box both mentions' spans; each mention is one eval phrase."""
    caption = "a man hugs a dog and the man laughs"
    record = {
        "image_id": 1,
        "caption": caption,
        "tokens_positive_eval": [[[0, 5]], [[11, 16]], [[21, 28]]],
        "annotations": [
            {"bbox": [0, 0, 10, 10], "bbox_mode": XYXY, "tokens_positive": [[0, 5], [21, 28]]},
            {"bbox": [50, 50, 60, 60], "bbox_mode": XYXY, "tokens_positive": [[11, 16]]},
        ],
    }
    assert caption[21:28] == "the man"
    _register("glip_test_flickr_twice", [record])
    ev = FlickrRecallEvaluator("glip_test_flickr_twice", distributed=False)
    ev.reset()
    # "a man" and "a dog" found; "the man" gets a wrong box first, the right one second.
    boxes = [[0, 0, 10, 10], [50, 50, 60, 60], [30, 30, 40, 40], [0, 0, 10, 10]]
    out = _instances(boxes, [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 2])
    ev.process([{"image_id": 1}], [{"instances": out}])
    res = ev.evaluate()["flickr"]
    assert res["R@1_all"] == pytest.approx(200 / 3)  # 3 phrases, the second mention counted
    assert res["R@5_all"] == pytest.approx(100.0)


SENTENCES = (
    "[/EN#1/people A man] in [/EN#2/clothing/other a red shirt] pets [/EN#3/animals a dog] ; "
    "[/EN#1/people the man] smiles .\n"
    "[/EN#4/scene A park] .\n"
)
CAPTION = "A man in a red shirt pets a dog ; the man smiles ."
MAN, SHIRT, DOG, THE_MAN = [0, 5], [9, 20], [26, 31], [34, 41]


def test_read_flickr_sentences(tmp_path):
    path = tmp_path / "1.txt"
    path.write_text(SENTENCES)
    (sentence, phrases), (park, park_phrases) = read_flickr_sentences(str(path))
    assert sentence == CAPTION and park == "A park ."
    assert [p["span"] for p in phrases] == [tuple(s) for s in (MAN, SHIRT, DOG, THE_MAN)]
    assert [CAPTION[slice(*p["span"])] for p in phrases] == [p["text"] for p in phrases]
    assert phrases[1]["types"] == ["clothing", "other"] and phrases[3]["entity"] == "1"
    assert park_phrases == [{"span": (0, 6), "entity": "4", "types": ["scene"], "text": "A park"}]


def _flickr_folder(tmp_path, caption=CAPTION):
    (tmp_path / "entities" / "Sentences").mkdir(parents=True)
    (tmp_path / "entities" / "Sentences" / "1000.txt").write_text(SENTENCES)
    annotations = [
        (1, [0, 0, 10, 10], [MAN, THE_MAN]),
        (2, [0, 20, 10, 40], [SHIRT]),
        (3, [50, 50, 70, 70], [DOG]),
    ]
    data = {
        "images": [
            {
                "id": 7,
                "file_name": "1000.jpg",
                "height": 100,
                "width": 100,
                "caption": caption,
                "sentence_id": 0,
                "original_img_id": 1000,
                "tokens_positive_eval": [[MAN], [SHIRT], [DOG], [THE_MAN]],
            }
        ],
        "annotations": [
            {"id": i, "image_id": 7, "bbox": box, "tokens_positive": spans, "category_id": 1}
            for i, box, spans in annotations
        ],
    }
    (tmp_path / "flickr.json").write_text(json.dumps(data))
    return str(tmp_path / "flickr.json"), str(tmp_path / "entities")


def test_flickr_recall_per_phrase_type(tmp_path):
    json_file, entities = _flickr_folder(tmp_path)
    name = "glip_test_flickr_types"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    register_mdetr_grounding(name, json_file, str(tmp_path), evaluator_type="flickr",
                             entities_dir=entities)  # fmt: skip
    (record,) = DatasetCatalog.get(name)
    assert record["phrase_types"] == [["people"], ["clothing", "other"], ["animals"], ["people"]]
    ev = FlickrRecallEvaluator(name, distributed=False)
    ev.reset()
    # GT (xywh -> XYXY): man [0, 0, 10, 10], shirt [0, 20, 10, 60], dog [50, 50, 120, 120].
    # "A man" and "a dog" hit at rank 1, "a red shirt" misses, "the man" hits at rank 2.
    boxes = [[0, 0, 10, 10], [80, 80, 90, 90], [50, 50, 120, 120], [5, 5, 9, 9], [0, 0, 10, 10]]
    ev.process([{"image_id": 7}], [{"instances": _instances(boxes, [0.9, 0.8, 0.7, 0.6, 0.5],
                                                           [0, 1, 2, 3, 3])}])  # fmt: skip
    res = ev.evaluate()["flickr"]
    assert (res["R@1_all"], res["R@5_all"]) == pytest.approx((50.0, 75.0))
    assert (res["R@1_people"], res["R@5_people"]) == pytest.approx((50.0, 100.0))
    assert res["R@1_animals"] == 100.0
    # the shirt counts under both its types, and once in "all" (4 phrases, not 5)
    assert res["R@5_clothing"] == res["R@5_other"] == 0.0
    assert "R@1_scene" not in res  # the park sentence is another record's, not evaluated here


def test_flickr_types_refuse_a_sentence_that_is_not_the_caption(tmp_path):
    json_file, entities = _flickr_folder(tmp_path, caption=CAPTION.replace("red", "blue"))
    name = "glip_test_flickr_types_bad"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    register_mdetr_grounding(name, json_file, str(tmp_path), entities_dir=entities)
    with pytest.raises(ValueError, match=r"1000.txt, sentence 0 \(record image_id=7\).*caption"):
        DatasetCatalog.get(name)
    # no Sentences folder: no types, no error
    register_mdetr_grounding(name + "_none", json_file, str(tmp_path), entities_dir=str(tmp_path))
    assert "phrase_types" not in DatasetCatalog.get(name + "_none")[0]
