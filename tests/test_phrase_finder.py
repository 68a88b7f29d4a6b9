"""Phrases without a parser: token scores -> phrases (glip_d2/text/phrase_finder.py), the token
score of glip_d2/modeling/phrase_grounding.py, and the predictor's free-sentence path."""

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from glip_d2.text import find_phrases, load_tokenizer
from glip_d2.text.phrase_finder import phrase_runs


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bundled-minilm")


def scores_for(tokenizer, caption, passing, low=0.1, high=0.6):
    """A score vector (256,) with ``high`` at the tokens whose text is in ``passing``
    (word pieces written as the tokenizer shows them, e.g. "##boarding")."""
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption)["input_ids"])
    scores = torch.full((256,), low)
    for i, tok in enumerate(tokens):
        if tok in passing:
            scores[i] = high
    return scores, tokens


def test_runs_of_passing_tokens_become_phrases(tokenizer):
    caption = "a large red circle left of a blue star."
    scores, _ = scores_for(tokenizer, caption, {"red", "circle", "blue", "star"})
    names, spans = find_phrases(tokenizer, caption, scores, 0.25)
    assert names == ["red circle", "blue star"]
    assert spans == [[[8, 18]], [[29, 38]]]
    assert [caption[s:e] for ((s, e),) in spans] == names


def test_adjacent_runs_merge_and_repeats_group(tokenizer):
    # no failing token between "red circle" and "blue star": one run (as Grounding DINO joins
    # them); the same text twice is one phrase with two spans
    caption = "red circle blue star and red circle"
    scores, _ = scores_for(tokenizer, caption, {"red", "circle", "blue", "star"})
    names, spans = find_phrases(tokenizer, caption, scores, 0.25)
    assert names == ["red circle blue star", "red circle"]
    assert spans == [[[0, 20]], [[25, 35]]]


def test_word_pieces_join_whole_words(tokenizer):
    caption = "a skateboarding dog"
    scores, tokens = scores_for(tokenizer, caption, {"##boarding"})
    assert tokens[1:4] == ["a", "skate", "##boarding"]  # one word, two pieces
    names, spans = find_phrases(tokenizer, caption, scores, 0.25)
    assert names == ["skateboarding"] and spans == [[[2, 15]]]
    scores[4] = 0.9  # "dog" too: the run now spans both words
    assert find_phrases(tokenizer, caption, scores, 0.25)[0] == ["skateboarding dog"]


def test_punctuation_is_stripped_and_punctuation_runs_dropped(tokenizer):
    caption = "a cat, a t-shirt; and ... a dog."
    scores, tokens = scores_for(tokenizer, caption, {"cat", ",", "t", "-", "shirt", ".", "dog"})
    names, spans = find_phrases(tokenizer, caption, scores, 0.25)
    # "cat," -> "cat"; "t-shirt" keeps its inner hyphen; the lone "..." run is dropped;
    # "dog." -> "dog"
    assert names == ["cat", "t-shirt", "dog"]
    assert spans == [[[2, 5]], [[9, 16]], [[28, 31]]]


def test_special_tokens_and_padding_never_pass(tokenizer):
    caption = "a red circle"
    scores = torch.ones(256)  # [CLS], [SEP] and the padding score 1 as well
    names, spans = find_phrases(tokenizer, caption, scores, 0.25)
    assert names == ["a red circle"] and spans == [[[0, 12]]]


def test_threshold_that_keeps_nothing(tokenizer):
    caption = "a large red circle left of a blue star."
    scores, _ = scores_for(tokenizer, caption, {"red", "circle"}, low=0.125, high=0.75)
    assert find_phrases(tokenizer, caption, scores, 0.75) == ([], [])  # strictly greater
    assert find_phrases(tokenizer, caption, scores, 0.99) == ([], [])
    assert find_phrases(tokenizer, caption, scores, 0.74)[0] == ["red circle"]


def test_runs_and_bad_input():
    # tokens: [CLS] w0 w0 w1 , w2 [SEP]
    word_ids = [None, 0, 0, 1, 2, 3, None]
    special = [1, 0, 0, 0, 0, 0, 1]
    scores = [0.9, 0.1, 0.5, 0.1, 0.1, 0.5, 0.9]
    assert phrase_runs(scores, word_ids, special, 0.3) == [(1, 2), (5, 5)]
    assert phrase_runs(scores, word_ids, special, 0.5) == []
    with pytest.raises(ValueError, match="3 token scores for a caption of 7 tokens"):
        phrase_runs(scores[:3], word_ids, special, 0.3)
    with pytest.raises(ValueError, match="non-empty"):
        find_phrases(load_tokenizer("bundled-minilm"), "  ", torch.zeros(8), 0.3)


# ------------------------------------------------------------------ with a model


@pytest.fixture(scope="module")
def predictor():
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config
    from glip_d2.predictor import GLIPPredictor

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(
        str(REPO_ROOT / "configs" / "quick_schedules" / "glip_small_instant_test.yaml")
    )
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0  # random weights: keep every candidate
    cfg.TEST.GLIP.PHRASE_FINDER = "model"
    torch.manual_seed(0)
    return GLIPPredictor(cfg)


def _image():
    return (np.random.RandomState(0).rand(96, 128, 3) * 255).astype("uint8")


SENTENCE = "a red square next to a blue disc"


def test_token_score_is_the_best_one_token_detection_score(predictor):
    from glip_d2.modeling.phrase_grounding import token_scores

    data, names = predictor.prepare(_image(), SENTENCE)
    assert names is None and set(data) == {"image", "height", "width", "caption"}
    with torch.no_grad():
        dense = predictor.model.dense_outputs([data])
    got = token_scores(dense["logits"], dense["centerness"], dense["text_mask"])[0]
    logits, ctr = dense["logits"][0], dense["centerness"][0, :, 0]
    n_tokens = int(dense["text_mask"][0].sum())
    for t in range(n_tokens):  # straightforward: every location's score, then the best
        best = max(
            float(torch.sqrt(torch.sigmoid(logits[n, t]) * torch.sigmoid(ctr[n])))
            for n in range(logits.shape[0])
        )
        assert got[t].item() == pytest.approx(best, rel=1e-6)
    assert got[n_tokens:].eq(0).all()


def test_found_phrases_detect_as_the_same_caption_with_spans(predictor, monkeypatch):
    """The one-pass path gives exactly the detections of the caption with the found spans."""
    from glip_d2.modeling.phrase_grounding import token_scores

    data, _ = predictor.prepare(_image(), SENTENCE)
    with torch.no_grad():
        dense = predictor.model.dense_outputs([data])
    scores = token_scores(dense["logits"], dense["centerness"], dense["text_mask"])[0]
    # random weights score all tokens alike: a threshold between them keeps some of them
    monkeypatch.setattr(predictor, "text_threshold", float(scores[1:9].median()))
    out = predictor(_image(), SENTENCE)
    assert 0 < len(out["phrases"]) < 8 and out["caption"] == SENTENCE
    assert [SENTENCE[s:e] for (s, e), *_ in out["phrase_spans"]] == out["phrases"]
    ref = predictor(_image(), {"caption": SENTENCE, "phrase_spans": out["phrase_spans"]})
    assert len(out["instances"]) == len(ref["instances"]) > 0
    assert torch.equal(out["instances"].pred_boxes.tensor, ref["instances"].pred_boxes.tensor)
    assert torch.equal(out["instances"].scores, ref["instances"].scores)
    assert torch.equal(out["instances"].pred_classes, ref["instances"].pred_classes)


def test_free_sentence_without_spacy_uses_the_model(predictor, monkeypatch):
    import glip_d2.predictor as predictor_module

    monkeypatch.setattr(predictor, "phrase_finder", "auto")
    monkeypatch.setattr(predictor_module, "spacy_available", lambda: False)
    monkeypatch.setattr(predictor, "text_threshold", 0.0)  # every word passes: one phrase
    batch = predictor.predict_batch([_image(), _image()], [SENTENCE, ["red square", "disc"]])
    assert batch[0]["phrases"] == [SENTENCE] and batch[0]["phrase_spans"] == [[[0, 32]]]
    assert batch[1]["phrases"] == ["red square", "disc"] and "phrase_spans" not in batch[1]
    monkeypatch.setattr(predictor, "text_threshold", 0.99)  # nothing passes: no detection
    out = predictor(_image(), SENTENCE)
    assert out["phrases"] == [] and len(out["instances"]) == 0
    assert out["instances"].image_size == (96, 128)
    with pytest.raises(ValueError, match="non-empty"):
        predictor(_image(), "   ")
