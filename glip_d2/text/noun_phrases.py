"""Noun phrases of a free sentence, for prompting GLIP with a caption (the official demo:
microsoft/GLIP maskrcnn_benchmark/engine/predictor_glip.py, ``GLIPDemo.run_ner``).

The official demo tags the caption with NLTK and chunks it with the grammar
``NP: {<DT>?<JJ.*>*<NN.*>+}``. NLTK's tagger data is not installable from PyPI, so glip_d2 tags
with spaCy (Penn Treebank tags, the same tag set) and applies the same grammar itself. spaCy and
an English pipeline are optional (``pip install glip_d2[nlp]`` for spaCy, then ``python -m spacy
download en_core_web_sm``: the pipelines are not on PyPI), imported only when a free sentence has
to be split.

Unlike the official demo, every occurrence of a phrase becomes one more character span of the
same phrase (one class per distinct phrase), so phrase indices and names never drift apart.
"""

import os
import string
from functools import lru_cache

__all__ = [
    "chunk_noun_phrases",
    "extract_noun_phrases",
    "group_phrase_ranges",
    "spacy_available",
    "tag_words",
]

# spaCy pipelines tried in order (the first installed one is used); GLIP_D2_SPACY_MODEL wins.
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg")


def chunk_noun_phrases(tagged):
    """Apply the official grammar ``<DT>?<JJ.*>*<NN.*>+`` (leftmost, longest) to tagged words.

    Args:
        tagged (list[tuple[str, str]]): (word, Penn Treebank tag) in sentence order.
    Returns:
        list[tuple[int, int]]: [first, last] word index (inclusive) of every noun phrase.
    """
    chunks, i, n = [], 0, len(tagged)
    while i < n:
        j = i
        if tagged[j][1] == "DT":
            j += 1
        while j < n and tagged[j][1].startswith("JJ"):
            j += 1
        k = j
        while k < n and tagged[k][1].startswith("NN"):
            k += 1
        if k > j:  # at least one noun: a chunk
            chunks.append((i, k - 1))
            i = k
        else:
            i += 1
    return chunks


@lru_cache(maxsize=1)
def _spacy_pipeline():
    try:
        import spacy
    except ImportError as e:
        raise ImportError(
            "splitting a free-sentence prompt into noun phrases needs spaCy and an English "
            "pipeline: pip install 'glip_d2[nlp]', then python -m spacy download en_core_web_sm. "
            "Or pass the phrases yourself: a list of class names or "
            "{'caption': ..., 'phrase_spans': ...}"
        ) from e
    names = [os.environ["GLIP_D2_SPACY_MODEL"]] if os.environ.get("GLIP_D2_SPACY_MODEL") else []
    for name in names + list(SPACY_PIPELINES):
        try:
            return spacy.load(name, exclude=["ner", "parser", "lemmatizer"])
        except OSError:
            continue
    raise ImportError(
        f"spaCy is installed but none of the English pipelines {names + list(SPACY_PIPELINES)} "
        "is: python -m spacy download en_core_web_sm, or set GLIP_D2_SPACY_MODEL to an "
        "installed one"
    )


@lru_cache(maxsize=1)
def spacy_available():
    """Whether spaCy and one of its English pipelines load (free sentences can be tagged)."""
    try:
        _spacy_pipeline()
    except ImportError:
        return False
    return True


def tag_words(text):
    """Penn Treebank tags of the words of ``text``: list of (word, tag, start, end)."""
    doc = _spacy_pipeline()(text)
    return [(t.text, t.tag_, t.idx, t.idx + len(t.text)) for t in doc]


def _strip_punctuation(text, start, end):
    """Move ``start``/``end`` inwards past punctuation and white space."""
    while start < end and (text[start] in string.punctuation or text[start].isspace()):
        start += 1
    while end > start and (text[end - 1] in string.punctuation or text[end - 1].isspace()):
        end -= 1
    return start, end


def group_phrase_ranges(text, ranges):
    """Character ranges of phrases -> distinct phrases and their spans.

    Leading and trailing punctuation is stripped from each range; ranges left empty
    (punctuation only) are dropped; ranges with the same lowercased text become one phrase.

    Args:
        text (str): the caption.
        ranges (list[tuple[int, int]]): ``[start, end)`` of each phrase occurrence, in order.
    Returns:
        (list[str], list[list[list[int]]]): distinct phrases (lowercased, in order of first
        appearance) and, per phrase, the ``[start, end)`` spans of its occurrences.
    """
    names, spans = [], []
    for start, end in ranges:
        start, end = _strip_punctuation(text, start, end)
        if start >= end:
            continue
        name = text[start:end].lower()
        if name not in names:
            names.append(name)
            spans.append([])
        spans[names.index(name)].append([start, end])
    return names, spans


def extract_noun_phrases(text, tagged=None):
    """Split a sentence into noun phrases with their character spans.

    Args:
        text (str): the caption.
        tagged (list[tuple[str, str, int, int]] or None): (word, tag, start, end) per word;
            None tags ``text`` with spaCy.
    Returns:
        (list[str], list[list[list[int]]]): distinct phrases (lowercased, in order of first
        appearance) and, per phrase, the ``[start, end)`` spans of all its occurrences.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a free-sentence prompt must be a non-empty string, got {text!r}")
    tagged = tag_words(text) if tagged is None else tagged
    chunks = chunk_noun_phrases([(w, t) for w, t, _, _ in tagged])
    names, spans = group_phrase_ranges(
        text, [(tagged[first][2], tagged[last][3]) for first, last in chunks]
    )
    if not names:
        raise ValueError(f"no noun phrase found in the prompt {text!r}; pass the phrases instead")
    return names, spans
