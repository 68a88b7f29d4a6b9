"""k-shot subsets (DATASETS.GLIP.FEW_SHOT): the official selection rule, seeds, logging."""

import logging
import random

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from glip_d2.data.build import get_grounding_dataset_dicts
from glip_d2.data.few_shot import few_shot_subset, few_shot_table


def _record(image_id, classes, size=10.0):
    annos = [
        {"bbox": [1.0, 1.0, size, size], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c}
        for c in classes
    ]
    return {"image_id": image_id, "file_name": f"{image_id}.jpg", "annotations": annos}


def _hand_set():
    # image id -> categories of its boxes; 6 has only a 1-px-wide box, 7 no box: both invalid.
    records = [_record(i, c) for i, c in [(5, [1]), (2, [0]), (4, [0, 2]), (1, [0, 0, 1]),
                                         (3, [2]), (7, [])]]  # fmt: skip
    records.append(_record(6, [2], size=1.0))
    return records


def _ids(records):
    return [r["image_id"] for r in records]


def test_official_rule_by_hand():
    records = _hand_set()
    # k=1: image 1 covers a and b (its two "a" boxes count once), 3 covers c; 2, 4, 5 add nothing.
    one = few_shot_subset(records, 1, 3)
    assert _ids(one) == [1, 3]
    _, images, instances = few_shot_table(one, ["a", "b", "c"])
    assert images == [1, 1, 1] and instances == [2, 1, 1]
    # k=2: image 4 is kept for c and brings a third "a" image; kept images keep every box.
    two = few_shot_subset(records, 2, 3)
    assert _ids(two) == [1, 2, 3, 4, 5]
    _, images, instances = few_shot_table(two, ["a", "b", "c"])
    assert images == [3, 2, 2] and instances == [4, 2, 2]
    assert one[0] is records[3]  # the records themselves, annotations untouched


def test_k_larger_than_a_category_keeps_all_valid_images():
    records = _hand_set()
    subset = few_shot_subset(records, 5, 3)
    assert sorted(_ids(subset)) == [1, 2, 3, 4, 5]  # never the invalid 6 and 7
    with pytest.raises(ValueError, match="FEW_SHOT must be >= 1"):
        few_shot_subset(records, 0, 3)
    with pytest.raises(ValueError, match="category ids \\[3\\] outside the 3 classes"):
        few_shot_subset([_record(1, [3])], 1, 3)


def _random_set(n=120, num_classes=5):
    rng = random.Random(0)
    return [
        _record(i, [rng.randrange(num_classes) for _ in range(rng.randint(1, 3))])
        for i in rng.sample(range(1000), n)
    ]


def test_seeds_deterministic_and_distinct_and_cover_every_category():
    records = _random_set()
    base = few_shot_subset(records, 3, 5, seed=0)
    assert _ids(base) == sorted(_ids(base))  # seed 0: image-id order
    a1, a2, b = (few_shot_subset(records, 3, 5, seed=s) for s in (1, 1, 2))
    assert _ids(a1) == _ids(a2)
    assert _ids(a1) != _ids(b) and _ids(a1) != _ids(base)
    # seed s walks the sorted ids in random.Random(s).shuffle order (official COCODataset).
    order = sorted(_ids(records))
    random.Random(1).shuffle(order)
    position = {image_id: i for i, image_id in enumerate(order)}
    assert _ids(a1) == sorted(_ids(a1), key=position.get)
    for subset in (base, a1, b):
        _, images, _ = few_shot_table(subset, list("abcde"))
        assert all(n >= 3 for n in images)
        # greedy: every kept image had a category still short of 3 when it was taken
        seen = [0] * 5
        for r in subset:
            classes = {a["category_id"] for a in r["annotations"]}
            assert any(seen[c] < 3 for c in classes)
            for c in classes:
                seen[c] += 1


def test_loader_hook_subsets_detection_sets_and_logs_a_table(caplog):
    name = "glip_test_few_shot_det"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, _hand_set)
        MetadataCatalog.get(name).set(thing_classes=["ant", "bee", "cat"])
    grounding = "glip_test_few_shot_grounding"
    if grounding not in DatasetCatalog.list():
        DatasetCatalog.register(
            grounding,
            lambda: [{"image_id": 1, "caption": "a cat", "annotations": [_record(1, [0])]}],
        )
    logging.getLogger("glip_d2").setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="glip_d2.data.few_shot"):
        records, sizes = get_grounding_dataset_dicts([name, grounding], few_shot=1)
    assert sizes == [2, 1] and _ids(records[:2]) == [1, 3]
    text = caplog.text
    assert "1-shot subset of 'glip_test_few_shot_det' (seed 0): 2 of 7 images" in text
    assert "|    ant     | 1        | 2           |    bee     | 1        | 1" in text
    assert "|   total    | 2        | 4 " in text
    records, sizes = get_grounding_dataset_dicts([name], few_shot=0)
    assert sizes == [6]  # FEW_SHOT 0: the whole set less D2's empty-image filter (image 7)
