"""Property-based tests (hypothesis) of prompt building, chunking and positive maps (issue #13
item 8): random names and spans give a prompt or a documented ValueError, never another
exception; every kept name covers at least one token; chunks cover every name once, in order.

Deterministic (``derandomize``, no example database) and small, so CI runs the same examples
in a few seconds."""

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glip_d2.text import (
    PromptJobBuilder,
    TrainingPromptSampler,
    build_detection_prompt,
    build_positive_map,
    check_phrase_spans,
    chunk_phrases,
    clean_name,
    load_tokenizer,
    prompt_fits,
)

FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TOKENIZER = load_tokenizer("bundled-minilm")

# Names as users and datasets write them, from an alphabet chosen to hit every tokenizer path
# (a fixed alphabet also spares hypothesis building its unicode tables): ASCII, accents and
# combining marks, other scripts (Greek, Cyrillic, Arabic, Hebrew, CJK, kana, hangul), emoji
# with skin tones, whitespace of several kinds, zero-width and control characters (dropped by
# the tokenizer), and clean_name's parentheses and underscores.
_ALPHABET = (
    "abcXYZ019.,;:-'\"/&"
    "éÅüßñ\u0301"
    "λЖبש猫中ピ한"
    "🍕🦒👍🏽"
    " \t\n\r\u00a0\u2003"
    "\u200b\u200d\u200f\x00\x07\ufffd"
    "()[]_"
)
_CHARS = st.sampled_from(list(_ALPHABET))
_NAME = st.text(_CHARS, min_size=1, max_size=12)
NAMES = st.lists(
    st.one_of(
        _NAME,
        _NAME,
        _NAME,
        st.text(_CHARS, max_size=3),  # often empty or blank after clean_name
        st.text(st.sampled_from(list("ab (_)")), min_size=20, max_size=80),  # very long
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR)  # warnings about odd names are expected here


def _vocabulary_or_error(names):
    """The detection prompt, or None when build_detection_prompt refuses a name (ValueError)."""
    try:
        return build_detection_prompt(names)
    except ValueError as e:
        assert "empty phrase after clean_name" in str(e)
        assert any(not clean_name(n).strip() for n in names)
        return None


@FAST
@given(NAMES)
def test_detection_prompt_spans_cover_the_cleaned_names(names):
    built = _vocabulary_or_error(names)
    if built is None:
        return
    caption, spans = built
    assert len(spans) == len(names)
    ends = [0]
    for name, phrase in zip(names, spans, strict=True):
        ((start, end),) = phrase
        assert caption[start:end] == clean_name(name) and start >= ends[-1]
        ends.append(end)
    assert check_phrase_spans(caption, spans) == spans


@FAST
@given(NAMES, st.sampled_from([16, 24, 64]), st.sampled_from([0, 1, 3]))
def test_chunks_cover_every_name_once_in_order(names, max_len, chunk_size):
    try:
        chunks = chunk_phrases(TOKENIZER, names, max_len, chunk_size)
    except ValueError as e:  # documented: a name alone exceeds the prompt, or is empty
        assert "alone takes" in str(e) or "empty phrase" in str(e)
        return
    assert [i for chunk in chunks for i in chunk] == list(range(len(names)))
    for chunk in chunks:
        assert chunk and (chunk_size == 0 or len(chunk) <= chunk_size)
        caption, _ = build_detection_prompt([names[i] for i in chunk], check_duplicates=False)
        assert len(chunk) == 1 or prompt_fits(TOKENIZER, caption, max_len)


@FAST
@given(NAMES, st.sampled_from([16, 32, 256]), st.sampled_from([0, 2]))
def test_every_kept_name_covers_a_token(names, max_len, chunk_size):
    """PromptJobBuilder (the model's path): jobs cover the vocabulary in order; each job's
    positive map gives every phrase at least one token, or the phrase is refused by name."""
    builder = PromptJobBuilder(TOKENIZER, max_len, chunk_size)
    try:
        jobs = builder.jobs(0, {"class_names": names})
    except ValueError as e:
        assert "alone takes" in str(e) or "empty phrase" in str(e)
        return
    assert [i for job in jobs for i in job.phrase_ids] == list(range(len(names)))
    for job in jobs:
        try:
            pmap = builder.positive_map(job)
        except ValueError as e:  # characters the tokenizer drops (zero-width, controls)
            assert "covers no token" in str(e)
            continue
        assert pmap.shape == (len(job.phrase_ids), max_len)
        assert set(pmap.unique().tolist()) <= {0.0, 1.0}
        assert (pmap.sum(dim=1) >= 1).all()


_BOUND = st.one_of(
    *[st.integers(-3, 40)] * 6,
    st.sampled_from([None, 2.5, 3.0, float("nan"), float("inf"), "3", True]),
)
SPAN = st.lists(_BOUND, min_size=1, max_size=3)  # mostly [start, end]; malformed sometimes


@FAST
@given(
    st.text(_CHARS, min_size=0, max_size=30),
    st.lists(st.lists(SPAN, min_size=0, max_size=3), min_size=0, max_size=4),
    st.sampled_from([8, 256]),
)
def test_random_spans_give_a_map_or_a_value_error(caption, phrase_spans, max_len):
    try:
        checked = check_phrase_spans(caption, phrase_spans)
    except ValueError:
        checked = None
    try:
        pmap = build_positive_map(TOKENIZER, caption, phrase_spans, max_len)
    except ValueError:
        return
    assert checked is not None  # whatever check_phrase_spans accepts
    assert pmap.shape == (len(checked), max_len) and (pmap.sum(dim=1) >= 1).all()


@FAST
@given(NAMES, st.lists(st.integers(0, 11), max_size=6), st.integers(0, 2**16))
def test_training_prompts_hold_their_classes_once(names, positives, seed):
    import random

    positives = [c for c in positives if c < len(names)]
    try:
        sampler = TrainingPromptSampler(TOKENIZER, names, num_negatives=3, max_tokens=30)
        caption, spans, classes = sampler(positives, random.Random(seed))
    except ValueError as e:
        assert "empty phrase" in str(e) or "no class fits" in str(e)
        return
    assert len(classes) == len(set(classes)) == len(spans)
    for c, ((start, end),) in zip(classes, spans, strict=True):
        assert caption[start:end] == clean_name(names[c])
