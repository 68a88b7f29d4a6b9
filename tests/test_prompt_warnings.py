"""Prompts the model cannot read in full are reported (issue #13 item 7): names it cannot tell
apart (once per vocabulary), phrases made only of [UNK] tokens, spans lost to truncation.

Warnings are logged once per message and process, so every test uses texts of its own."""

import logging

import pytest

from glip_d2.data.datasets import lvis_v1_official_names
from glip_d2.text import PromptJobBuilder, TrainingPromptSampler, build_positive_map
from glip_d2.text import load_tokenizer as _load


@pytest.fixture(scope="module")
def tokenizer():
    return _load("bundled-minilm")


def _messages(caplog, *needles):
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and all(n in r.getMessage() for n in needles)
    ]


def test_lvis_duplicates_are_reported_once(tokenizer, caplog):
    names = lvis_v1_official_names() + ["glip test name one"]  # a vocabulary of its own
    with caplog.at_level(logging.WARNING):
        for chunk_size in (0, 40):  # 14 packed prompts, then the official 31 chunks
            builder = PromptJobBuilder(tokenizer, 256, chunk_size)
            assert len(builder.jobs(0, {"class_names": names})) == (14 if not chunk_size else 31)
    (message,) = _messages(caplog, "bow_(weapon)")
    assert "['salmon_(fish)', 'salmon_(food)']" in message and "vocabulary of 1204" in message


def test_token_identical_names_are_reported(tokenizer, caplog):
    """Text-different names with the same word pieces: accents, spacing around punctuation."""
    names = ["café", "cafe", "t-shirt", "t - shirt", "giraffe"]
    with caplog.at_level(logging.WARNING):
        TrainingPromptSampler(tokenizer, names)
        PromptJobBuilder(tokenizer, 64).jobs(0, {"class_names": names})
    (message,) = _messages(caplog, "cannot tell apart", "café")
    assert "[['café', 'cafe'], ['t-shirt', 't - shirt']]" in message


def test_unknown_token_phrases_are_named(tokenizer, caplog):
    builder = PromptJobBuilder(tokenizer, 64)
    with caplog.at_level(logging.WARNING):
        for job in builder.jobs(0, {"class_names": ["🍕", "🦒 giraffe", "dog"]}):
            builder.positive_map(job)
        caption = "a 猫 next to a zebra"
        build_positive_map(tokenizer, caption, [[[2, 3]], [[14, 19]]])
    assert len(_messages(caplog, "['🍕'] is made only of [UNK]")) == 1
    assert len(_messages(caplog, "['猫'] is made only of [UNK]")) == 1
    assert not _messages(caplog, "giraffe") and not _messages(caplog, "zebra")


def test_truncated_span_is_reported(tokenizer, caplog):
    caption = "a yak and " + "many " * 20 + "the same yak"  # 2 + 2 + 20 + 3 word pieces
    spans = [[[2, 5], [len(caption) - 3, len(caption)]], [[10, 14]]]
    with caplog.at_level(logging.WARNING):
        pmap = build_positive_map(tokenizer, caption, spans, max_len=16)
    assert pmap[0].sum() == len(tokenizer.tokenize("yak"))  # the first mention only
    (message,) = _messages(caplog, "Phrase 0 ['yak', 'yak']")
    assert f"[[{len(caption) - 3}, {len(caption)}]]" in message and "truncation" in message
    with pytest.raises(ValueError, match="covers no token"):  # nothing left: an error
        build_positive_map(tokenizer, caption, [[[len(caption) - 3, len(caption)]]], max_len=16)
