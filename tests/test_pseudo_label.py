"""Teacher -> pseudo-labels (glip_d2/pseudo_label.py): the confidence rule, the json round trip
through register_pseudo_label_captions, resuming an interrupted run, shards."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from glip_d2.data.datasets import register_pseudo_label_captions, screen_teacher_boxes
from glip_d2.pseudo_label import (
    entry_from_prediction,
    label_shard,
    load_caption_pairs,
    merge_parts,
    missing_indices,
    prepare_parts_dir,
)


def test_confidence_rule():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 5, 5]]
    scores = [0.9, 0.5, 0.51, 0.2]
    assert screen_teacher_boxes(boxes, scores, conf=0.5) == [0, 2]  # strictly above 0.5
    assert screen_teacher_boxes(boxes, scores, conf=0.1) == [0, 1, 2, 3]
    assert screen_teacher_boxes(boxes, scores, conf=0.5, min_boxes=3) is None
    assert screen_teacher_boxes(boxes, scores, conf=0.95) is None  # no box: min_boxes 1
    assert screen_teacher_boxes(boxes, scores, conf=0.95, min_boxes=0) == []
    # CAPTION_NMS: class-agnostic (box 1 overlaps box 0 at IoU 0.68 whatever their phrases)
    assert screen_teacher_boxes(boxes, scores, conf=0.1, nms=0.5) == [0, 2, 3]
    assert screen_teacher_boxes(boxes, scores, conf=0.1, nms=0.7) == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="4 boxes but 3 scores"):
        screen_teacher_boxes(boxes, scores[:3])


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def test_caption_pair_formats(tmp_path):
    listed = [
        {"file_name": "a.jpg", "caption": "a cat"},
        {"file_name": "b.jpg", "caption": "x", "image_id": 7, "height": 5, "width": 6},
    ]
    pairs = load_caption_pairs(_write(tmp_path / "l.json", listed))
    assert pairs == [{"file_name": "a.jpg", "caption": "a cat", "image_id": 0}, listed[1]]
    coco = {
        "images": [{"id": 3, "file_name": "c.jpg", "height": 8, "width": 9, "license": 1}],
        "annotations": [
            {"id": 1, "image_id": 3, "caption": "one"},
            {"image_id": 3, "caption": "two"},
        ],
    }
    pairs = load_caption_pairs(_write(tmp_path / "c.json", coco))
    assert [p["caption"] for p in pairs] == ["one", "two"]
    assert pairs[0] == {
        "file_name": "c.jpg",
        "caption": "one",
        "image_id": 3,
        "height": 8,
        "width": 9,
    }
    coco["annotations"].append({"image_id": 4, "caption": "three"})
    with pytest.raises(ValueError, match=r"c2.json: annotations\[2\] names no image"):
        load_caption_pairs(_write(tmp_path / "c2.json", coco))
    with pytest.raises(ValueError, match=r"bad.json: pair 1 has no 'caption'"):
        load_caption_pairs(_write(tmp_path / "bad.json", [listed[0], {"file_name": "b.jpg"}]))
    # pairs with their phrases: grounded as given; a span outside the caption is named
    given = [dict(listed[0], phrase_spans=[[[2, 5]]])]
    assert load_caption_pairs(_write(tmp_path / "g.json", given))[0]["phrase_spans"] == [[[2, 5]]]
    given[0]["phrase_spans"] = [[[2, 9]]]
    with pytest.raises(ValueError, match=r"g2.json: pair 0: phrase_spans\[0\]"):
        load_caption_pairs(_write(tmp_path / "g2.json", given))


def _prediction(caption="a red circle and a blue star"):
    inst = Instances((48, 64))
    # legacy inclusive boxes (x2 = x + w - 1), as the model predicts them
    inst.pred_boxes = Boxes(
        torch.tensor(
            [
                [10.0, 5.0, 29.0, 24.0],
                [40.0, 8.0, 59.5, 40.0],
                [11.0, 6.0, 30.0, 25.0],
                [0.0, 0.0, 9.0, 9.0],
            ]
        )
    )
    inst.scores = torch.tensor([0.8, 0.9, 0.6, 0.3])
    inst.pred_classes = torch.tensor([0, 1, 0, 1])
    return {
        "instances": inst,
        "phrases": ["red circle", "blue star"],
        "caption": caption,
        "phrase_spans": [[[2, 12]], [[19, 28]]],
    }


def test_entry_keeps_boxes_by_the_rule():
    pair = {"file_name": "x.png", "caption": "a red circle and a blue star", "image_id": 4}
    entry = entry_from_prediction(pair, _prediction(), 48, 64, conf=0.5)
    assert entry["caption"] == pair["caption"] and (entry["height"], entry["width"]) == (48, 64)
    red, blue = entry["entities"]
    assert red["phrase"] == "red circle" and red["tokens_positive"] == [[2, 12]]
    assert red["scores"] == pytest.approx([0.8, 0.6]) and blue["scores"] == pytest.approx([0.9])
    assert red["boxes"][0] == [10.0, 5.0, 30.0, 25.0]  # XYXY_ABS: inclusive x2 + 1
    assert entry_from_prediction(pair, _prediction(), 48, 64, conf=0.85)["entities"] == [
        {
            "phrase": "blue star",
            "tokens_positive": [[19, 28]],
            "boxes": [[40.0, 8.0, 60.5, 41.0]],
            "scores": [pytest.approx(0.9)],
        }
    ]
    assert (
        entry_from_prediction(pair, _prediction(), 48, 64, conf=0.5, min_boxes=4)["entities"] == []
    )  # fewer than CAPTION_MIN_BOX boxes: the image keeps none


def test_round_trip_through_register_pseudo_label_captions(tmp_path):
    from glip_d2.data.mapper import GroundingDatasetMapper
    from glip_d2.text import load_tokenizer

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "x.png")
    pair = {"file_name": "x.png", "caption": "a red circle and a blue star", "image_id": 4}
    pred = _prediction()
    json_file = _write(tmp_path / "pl.json", [entry_from_prediction(pair, pred, 48, 64)])
    register_pseudo_label_captions("test_pl_round_trip", json_file, str(tmp_path))
    (record,) = DatasetCatalog.get("test_pl_round_trip")
    assert record["caption"] == pair["caption"] and len(record["annotations"]) == 3
    mapper = GroundingDatasetMapper(
        True, augmentations=[], tokenizer=load_tokenizer("bundled-minilm"), flip_prob=0.0
    )
    out = mapper(record)
    assert out["caption"] == pair["caption"] and out["phrase_spans"] == [[[2, 12]], [[19, 28]]]
    inst = out["instances"]
    # the teacher's legacy boxes come back exactly, each with its phrase (entity order: red
    # 0.8, red 0.6, blue 0.9; the 0.3 box is not above CAPTION_CONF)
    assert inst.gt_classes.tolist() == [0, 0, 1]
    assert torch.equal(inst.gt_boxes.tensor, pred["instances"].pred_boxes.tensor[[0, 2, 1]])


class FakeTeacher:
    """Duck-typed GLIPPredictor: boxes from the caption's length; can fail at a given call."""

    input_format = "BGR"

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def predict_batch(self, images, captions):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        out = []
        for caption in captions:
            inst = Instances((16, 16))
            inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, float(len(caption) % 15), 9.0]]))
            inst.scores = torch.tensor([0.75])
            inst.pred_classes = torch.tensor([0])
            out.append(
                {"instances": inst, "phrases": [caption], "phrase_spans": [[[0, len(caption)]]]}
            )
        return out


@pytest.fixture
def caption_set(tmp_path):
    pairs = []
    for i in range(7):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
        pairs.append({"file_name": f"{i}.png", "caption": "a shape " * (i + 1), "image_id": i})
    return tmp_path, pairs


def _label(root, pairs, output, indices=None, teacher=None, job=None):
    parts = f"{output}.parts"
    prepare_parts_dir(parts, job or {"run": 1})
    todo = missing_indices(parts, len(pairs)) if indices is None else indices
    label_shard(teacher or FakeTeacher(), pairs, todo, str(root), parts, batch_size=2)
    return parts


def test_resume_after_interruption(caption_set):
    root, pairs = caption_set
    reference = root / "reference.json"
    merge_parts(_label(root, pairs, reference), len(pairs), reference)

    output = root / "pseudo.json"
    with pytest.raises(KeyboardInterrupt):
        _label(root, pairs, output, teacher=FakeTeacher(fail_at=3))  # dies in the 3rd batch
    parts = f"{output}.parts"
    assert not output.exists()  # never a half output
    assert missing_indices(parts, len(pairs)) == [4, 5, 6]  # two whole batches survived
    with pytest.raises(RuntimeError, match="3 pairs are not labelled"):
        merge_parts(parts, len(pairs), output)
    with pytest.raises(ValueError, match="other settings"):
        prepare_parts_dir(parts, {"run": 2})  # another job cannot continue this one
    teacher = FakeTeacher()
    _label(root, pairs, output, teacher=teacher)  # the same command again
    assert teacher.calls == 2  # only the 3 missing pairs: batches [4, 5] and [6]
    stats = merge_parts(parts, len(pairs), output)
    assert stats == {"pairs": 7, "pairs_with_boxes": 7, "boxes": 7, "phrases": 7}
    assert json.loads(output.read_text()) == json.loads(reference.read_text())
    assert not os.path.exists(parts)


def test_shards_of_several_processes_merge_to_one_run(caption_set):
    root, pairs = caption_set
    reference = root / "reference.json"
    merge_parts(_label(root, pairs, reference), len(pairs), reference)
    output = root / "sharded.json"
    todo = list(range(len(pairs)))
    for rank in range(3):  # what each of 3 ranks labels: every third missing pair
        parts = _label(root, pairs, output, indices=todo[rank::3])
    merge_parts(parts, len(pairs), output)
    assert json.loads(output.read_text()) == json.loads(reference.read_text())


def test_unreadable_image_is_named(caption_set):
    root, pairs = caption_set
    pairs = pairs + [{"file_name": "missing.png", "caption": "a cat", "image_id": 9}]
    with pytest.raises(ValueError, match=r"missing.png.*caption pair 7"):
        _label(root, pairs, root / "bad.json", indices=[7])
