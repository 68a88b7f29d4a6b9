"""Caption packing (glip_d2/data/caption_packing.py) and the mapper / loader around it."""

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from glip_d2.data.caption_packing import CaptionPacker
from glip_d2.text import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bundled-minilm")


def test_number_of_negatives_follows_the_official_draws(tokenizer):
    packer = CaptionPacker({"s": ["x"]}, tokenizer, pack_number=20)
    rng = random.Random(0)
    counts = Counter(packer.number_of_negatives(rng) for _ in range(20000))
    # P(0) = 0.4 + 0.6 * 0.5 / 20; P(20) = 0.6 * 0.5; each of 1..19: 0.6 * 0.5 / 20
    assert counts[0] / 20000 == pytest.approx(0.415, abs=0.01)
    assert counts[20] / 20000 == pytest.approx(0.3, abs=0.01)
    assert counts[7] / 20000 == pytest.approx(0.015, abs=0.004)
    assert max(counts) == 20 and min(counts) == 0
    always = CaptionPacker({"s": ["x"]}, tokenizer, pack_number=5, random_pack_prob=-1.0)
    assert {always.number_of_negatives(rng) for _ in range(50)} == {5}
    off = CaptionPacker({"s": ["x"]}, tokenizer, pack_number=0)
    assert off("s", "a cat", [[[2, 5]]], rng) == ("a cat", [[[2, 5]]])


def test_pack_joins_shuffles_and_shifts_spans(tokenizer):
    packer = CaptionPacker({"s": ["unused"]}, tokenizer, max_query_len=256)
    caption, spans = "a red circle and a blue star", [[[2, 12]], [[19, 28]]]
    negatives = ["two green squares.", "one yellow star", "a purple triangle"]
    for seed in range(5):
        packed, moved = packer.pack(caption, spans, negatives, random.Random(seed))
        assert packed.endswith(". ")  # every caption ends with "." (added when missing) + " "
        assert packed.split(". ")[-1] == "" and sorted(packed.split(". ")[:-1]) == sorted(
            [caption, "two green squares", "one yellow star", "a purple triangle"]
        )
        assert [packed[s:e] for ((s, e),) in moved] == ["red circle", "blue star"]
    assert packer.pack(caption, spans, [], random.Random(0)) == (caption, spans)


def test_safeguard_keeps_the_positive_caption_whole(tokenizer):
    # 16 tokens in all: the positive caption takes 5 ([CLS] a red circle [SEP]), leaving 11;
    # a negative is kept while its length (with [CLS], [SEP]) is below what is left
    packer = CaptionPacker({"s": ["x"]}, tokenizer, max_query_len=16)
    caption, spans = "a red circle", [[[2, 12]]]
    long = "one two three four five six seven eight nine ten"  # 12 tokens: never fits
    short = "a cat"  # 4 tokens each: 11 -> 7 -> 3, so two of them fit
    kept = Counter()
    for seed in range(20):
        packed, moved = packer.pack(
            caption, spans, [long, short, short, short], random.Random(seed)
        )
        assert long not in packed and packed.count("a cat.") == 2
        assert len(tokenizer(packed)["input_ids"]) <= 16
        assert [packed[s:e] for ((s, e),) in moved] == ["red circle"]
        kept[packed.index("a red circle")] += 1
    assert len(kept) == 3  # the positive caption lands first, second or third


def test_mapper_packs_caption_set_records_only(tmp_path, tokenizer):
    from detectron2.data import MetadataCatalog
    from detectron2.structures import BoxMode

    from glip_d2.data.mapper import GroundingDatasetMapper

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    MetadataCatalog.get("test_pack_detection").set(thing_classes=["cat", "dog"])
    packer = CaptionPacker(
        {"test_pack_captions": ["a dog", "two dogs"]},
        tokenizer,
        max_query_len=64,
        no_random_pack_prob=0.0,
        random_pack_prob=-1.0,  # always 20 draws; all short ones fit
    )
    mapper = GroundingDatasetMapper(
        True,
        augmentations=[],
        tokenizer=tokenizer,
        caption_packer=packer,
        seed=0,
        num_negatives=1,
    )
    box = {"bbox": [1, 1, 10, 10], "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 0}
    caption_record = {
        "file_name": str(tmp_path / "a.png"),
        "image_id": 1,
        "caption": "a cat",
        "dataset_name": "test_pack_captions",
        "annotations": [dict(box, tokens_positive=[[2, 5]], category_id=0)],
    }
    out = mapper(caption_record)
    # "a cat" takes 4 of the 64 tokens; each negative 4: kept while 4 < what is left (60, 56,
    # ..., 8), so 14 of the 20 drawn negatives
    assert out["caption"].count(". ") == 15 and "dog" in out["caption"]
    assert [out["caption"][s:e] for ((s, e),) in out["phrase_spans"]] == ["cat"]
    grounding = dict(caption_record, dataset_name="other_grounding_set")
    assert mapper(grounding)["caption"] == "a cat"  # not a caption set: not packed
    detection = {
        "file_name": str(tmp_path / "a.png"),
        "image_id": 2,
        "dataset_name": "test_pack_detection",
        "annotations": [dict(box, category_id=1)],
    }
    assert mapper(detection)["caption"] in ("cat. dog", "dog. cat", "dog")
    tester = GroundingDatasetMapper(
        False, augmentations=[], tokenizer=tokenizer, caption_packer=packer
    )
    assert tester(caption_record)["caption"] == "a cat"  # packing is for training only
