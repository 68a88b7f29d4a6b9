"""GLIPPredictor: prompt forms, noun phrases, and the acceptance test against the official
detections of the reference model (converted official checkpoint -> predictor -> detections)."""

import cv2
import numpy as np
import pytest
import torch
from conftest import load_reference, reference_cfg

from glip_d2.text import normalize_prompt, noun_phrases
from glip_d2.text.noun_phrases import chunk_noun_phrases, extract_noun_phrases

CAPTION1 = (
    "A pink arrow points to a black cross; below the cross sits a yellow ring on a pale "
    "sky-blue backdrop."
)
# Penn Treebank tags of CAPTION1 (as spaCy's English pipeline tags it), for tests without spaCy.
TAGS1 = "DT JJ NN NNS IN DT JJ NN : IN DT NN VBZ DT JJ NN IN DT JJ NN HYPH JJ NN .".split()


def tagged_caption1():
    words, pos = [], 0
    for w in CAPTION1.replace(";", " ;").replace(".", " .").replace("-", " - ").split():
        start = CAPTION1.index(w, pos)
        words.append((w, start, start + len(w)))
        pos = start + len(w)
    return [(w, t, s, e) for (w, s, e), t in zip(words, TAGS1, strict=True)]


# ---------------------------------------------------------------- prompt forms (no model)


def test_prompt_forms():
    fields, names = normalize_prompt(["cat", "dog"])
    assert fields == {"class_names": ["cat", "dog"]} and names == ["cat", "dog"]
    fields, names = normalize_prompt({"caption": "a red car", "phrase_spans": [[[0, 9]]]})
    assert fields == {"caption": "a red car", "phrase_spans": [[[0, 9]]]}
    assert names == ["a red car"]
    fields, names = normalize_prompt(("a red car and a cat", [[[2, 9]], [[16, 19]]]))
    assert names == ["red car", "cat"] and fields["phrase_spans"] == [[[2, 9]], [[16, 19]]]
    _, names = normalize_prompt(None, ["x", "y"])
    assert names == ["x", "y"]


@pytest.mark.parametrize(
    "prompt, match",
    [
        (None, "no prompt given"),
        ({"caption": "a cat"}, "phrase_spans"),
        ({"caption": "a cat", "phrase_spans": [[[2, 9]]]}, r"\[2, 9\].*5 characters"),
        ({"caption": "a cat", "phrase_spans": [[]]}, r"phrase_spans\[0\]"),
        (["cat", " "], "non-empty"),
        (42, "prompt must be"),
    ],
)
def test_bad_prompts_name_the_fault(prompt, match):
    with pytest.raises((ValueError, TypeError), match=match):
        normalize_prompt(prompt)


def test_official_chunk_grammar():
    tags = [("a", "DT"), ("big", "JJ"), ("red", "JJ"), ("dog", "NN"), ("runs", "VBZ"),
            ("the", "DT"), ("the", "DT"), ("cat", "NN"), ("food", "NN"), ("big", "JJ")]  # fmt: skip
    assert chunk_noun_phrases(tags) == [(0, 3), (6, 8)]


def test_noun_phrases_from_tags():
    names, spans = extract_noun_phrases(CAPTION1, tagged=tagged_caption1())
    assert names == [
        "a pink arrow points",
        "a black cross",
        "the cross",
        "a yellow ring",
        "a pale sky",
        "blue backdrop",
    ]
    assert spans[1] == [[23, 36]] and CAPTION1[76:86] == "a pale sky"
    tagged = [("the", "DT", 0, 3), ("cat", "NN", 4, 7), ("and", "CC", 8, 11),
              ("the", "DT", 12, 15), ("cat", "NN", 16, 19)]  # fmt: skip
    names, spans = extract_noun_phrases("the cat and the cat", tagged=tagged)
    assert names == ["the cat"] and spans == [[[0, 7], [12, 19]]]
    with pytest.raises(ValueError, match="no noun phrase"):
        extract_noun_phrases("runs", tagged=[("runs", "VBZ", 0, 4)])


def test_noun_phrases_with_spacy():
    pytest.importorskip("spacy")
    try:
        names, spans = extract_noun_phrases("Two dogs chase a small red ball on the green grass.")
    except ImportError:
        pytest.skip("no English spaCy pipeline installed")
    assert names == ["dogs", "a small red ball", "the green grass"]
    assert spans == [[[4, 8]], [[15, 31]], [[35, 50]]]


# ---------------------------------------------------------------- acceptance (reference model)


@pytest.fixture(scope="module")
def official_checkpoint(reference_dir, tmp_path_factory):
    """The reference weights wrapped as an official training file, text encoder included."""
    from safetensors.torch import load_file

    from glip_d2.text.tokenizer import bundled_minilm_path

    sd = load_reference(reference_dir, "state_dict_official_no_lang")
    model = {"module." + k: v for k, v in sd.items()}
    for k, v in load_file(str(bundled_minilm_path() / "model.safetensors")).items():
        model["module.language_backbone.body.model." + k] = v  # pooler/position_ids: dropped
    path = tmp_path_factory.mktemp("official") / "glip_small_official.pth"
    torch.save({"model": model, "iteration": 0}, path)
    return path


@pytest.fixture(scope="module")
def converted_checkpoint(official_checkpoint):
    from glip_d2.convert import main

    dst = official_checkpoint.parent / "glip_small_d2.pth"
    assert main([str(official_checkpoint), str(dst)]) == 0
    return dst


@pytest.fixture(scope="module")
def predictor(converted_checkpoint):
    from glip_d2.predictor import GLIPPredictor

    cfg = reference_cfg()
    cfg.MODEL.WEIGHTS = str(converted_checkpoint)
    return GLIPPredictor(cfg)


def reference_prompt(inputs, i):
    return (inputs["captions"][i], inputs["tokens_positive_char_spans"][i])


def read_png(reference_dir, i):
    image = cv2.imread(str(reference_dir / f"image{i}.png"), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def assert_same_detections(instances, ref, label_offset=1):
    """Compare as sets: label, box within 1e-3 px, score within 1e-6 (docs/DESIGN.md,
    "Official reference outputs")."""
    boxes = instances.pred_boxes.tensor
    scores, labels = instances.scores, instances.pred_classes
    want_boxes, want_scores = ref["det_boxes_orig_xyxy"], ref["det_scores"]
    want_labels = ref["det_labels"] - label_offset
    assert len(boxes) == len(want_boxes)
    unused = torch.ones(len(boxes), dtype=torch.bool)
    for b, s, lab in zip(want_boxes, want_scores, want_labels, strict=True):
        ok = (
            unused
            & (labels == lab)
            & ((boxes - b).abs().amax(dim=1) <= 1e-3)
            & ((scores - s).abs() <= 1e-6)
        )
        assert ok.any(), f"no match for reference detection {b.tolist()} {s.item()} {lab.item()}"
        unused[ok.nonzero()[0, 0]] = False


def test_resize_gives_the_official_pixels(predictor, reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    mean = torch.tensor(predictor.cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(predictor.cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    for i in range(2):
        data, _ = predictor.prepare(read_png(reference_dir, i), reference_prompt(inputs, i))
        want = inputs["preprocessed_images"][i]
        assert tuple(data["image"].shape) == tuple(want.shape)
        torch.testing.assert_close((data["image"] - mean) / std, want, rtol=0, atol=1e-5)


def test_acceptance_official_detections(predictor, reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    outputs = load_reference(reference_dir, "outputs_eval")
    for i in range(2):
        out = predictor(read_png(reference_dir, i), reference_prompt(inputs, i))
        assert out["phrases"] == [inputs["captions"][i][p[0][0] : p[0][1]] for p in
                                  inputs["tokens_positive_char_spans"][i]]  # fmt: skip
        assert out["instances"].image_size == (
            outputs[i]["orig_image_size_wh"][1],
            outputs[i]["orig_image_size_wh"][0],
        )
        assert_same_detections(out["instances"], outputs[i])


def test_class_names_prompt_equals_detection_prompt(predictor, reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    outputs = load_reference(reference_dir, "outputs_eval")
    out = predictor(read_png(reference_dir, 0), list(inputs["phrases"][0]))
    assert out["phrases"] == inputs["phrases"][0]
    assert_same_detections(out["instances"], outputs[0])


def test_rgb_input_format_gives_the_same_result(predictor, reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    image = read_png(reference_dir, 1)
    a = predictor(image, reference_prompt(inputs, 1))["instances"]
    predictor.input_format = "RGB"  # as built from INPUT.FORMAT "RGB"
    try:
        b = predictor(np.ascontiguousarray(image[:, :, ::-1]), reference_prompt(inputs, 1))
    finally:
        predictor.input_format = "BGR"
    assert torch.equal(a.pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    assert torch.equal(a.scores, b["instances"].scores)


def test_sentence_prompt_uses_noun_phrases(predictor, reference_dir, monkeypatch):
    monkeypatch.setattr(noun_phrases, "tag_words", lambda text: tagged_caption1())
    out = predictor(read_png(reference_dir, 1), CAPTION1)
    assert out["phrases"][:3] == ["a pink arrow points", "a black cross", "the cross"]
    assert len(out["instances"]) > 0
    assert int(out["instances"].pred_classes.max()) < len(out["phrases"])


def test_batch_equals_one_by_one(predictor, reference_dir):
    """Two image sizes; the flipped image 0 has image 0's size and so shares its model call."""
    inputs = load_reference(reference_dir, "inputs")
    images = [read_png(reference_dir, i) for i in range(2)]
    images.append(np.ascontiguousarray(images[0][:, ::-1]))
    prompts = [reference_prompt(inputs, i) for i in (0, 1, 0)]
    batch = predictor.predict_batch(images, prompts)
    assert len(batch) == 3
    for i in range(3):
        single = predictor(images[i], prompts[i])
        assert batch[i]["phrases"] == single["phrases"]
        a, b = batch[i]["instances"], single["instances"]
        assert len(a) == len(b)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-6)


def test_default_vocabulary_and_chunking(converted_checkpoint, reference_dir):
    from detectron2.data import MetadataCatalog

    from glip_d2.predictor import GLIPPredictor

    names = ["navy octagon", "lime diamond", "brown crescent", "gold kite", "red star"]
    MetadataCatalog.get("glip_d2_test_shapes").set(thing_classes=names)
    cfg = reference_cfg()
    cfg.MODEL.WEIGHTS = str(converted_checkpoint)
    cfg.DATASETS.TEST = ("glip_d2_test_shapes",)
    cfg.MODEL.GLIP.CHUNK_SIZE = 2  # three prompts of at most 2 names
    chunked = GLIPPredictor(cfg)
    out = chunked(read_png(reference_dir, 0))
    assert out["phrases"] == names
    classes = set(out["instances"].pred_classes.tolist())
    assert classes <= set(range(5)) and len(classes) >= 3
