"""Phrases of a caption from per-token scores, without a parser.

When no noun-phrase parser is at hand (spaCy, :mod:`.noun_phrases`), the model itself says
which words of a caption it can ground: the caption runs as one prompt, every token gets a
score (how :mod:`glip_d2.modeling.phrase_grounding` defines it), and the phrases are the
contiguous runs of tokens whose score passes a text threshold. This is how Grounding DINO names
its boxes (IDEA-Research/GroundingDINO groundingdino/util/inference.py, ``predict``, through
``get_phrases_from_posmap``: the tokens with probability > ``text_threshold``, 0.25 in its
demos), with three differences:

* runs are split: Grounding DINO decodes every passing token of a box into one string, here
  each maximal run of adjacent passing tokens is a phrase of its own;
* whole words: a word passes when any of its word pieces passes ("skate" "##boarding" both
  join the phrase when either passes), so a phrase never cuts a word;
* special tokens never pass, and punctuation is stripped from the ends of a phrase; a run of
  punctuation only is dropped (Grounding DINO removes "." from its strings).

Each phrase maps back to ``[start, end)`` character spans through the tokenizer's offsets;
runs with the same lowercased text become one phrase with several spans, as noun phrases do.
"""

import torch

from .noun_phrases import group_phrase_ranges

__all__ = ["find_phrases", "phrase_runs"]


def _encode(tokenizer, caption, max_len):
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"phrase finding needs a fast tokenizer (offsets); got {type(tokenizer)}")
    return tokenizer(
        caption,
        max_length=max_len,
        truncation=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )


def phrase_runs(token_scores, word_ids, special_tokens_mask, threshold):
    """Token runs that form phrases.

    Args:
        token_scores (sequence[float]): one score per token of the encoding (positions beyond
            ``len(word_ids)``, e.g. padding, are ignored).
        word_ids (list[int | None]): the word of each token (``encoding.word_ids()``).
        special_tokens_mask (list[int]): 1 for [CLS], [SEP], padding.
        threshold (float): a token passes when its score is strictly greater.
    Returns:
        list[tuple[int, int]]: inclusive ``(first, last)`` token index of each run, in order.
    """
    n = len(word_ids)
    if len(token_scores) < n:
        raise ValueError(f"{len(token_scores)} token scores for a caption of {n} tokens")
    passing_words = {
        word_ids[i]
        for i in range(n)
        if word_ids[i] is not None and not special_tokens_mask[i] and token_scores[i] > threshold
    }
    keep = [w is not None and w in passing_words for w in word_ids]
    runs, first = [], None
    for i in range(n + 1):
        if i < n and keep[i]:
            first = i if first is None else first
        elif first is not None:
            runs.append((first, i - 1))
            first = None
    return runs


def find_phrases(tokenizer, caption, token_scores, threshold, max_len=256):
    """Phrases of ``caption`` whose tokens score above ``threshold``.

    Args:
        tokenizer: the model's fast tokenizer.
        caption (str): the prompt, tokenized as the model tokenizes it (truncated at
            ``max_len`` tokens: only the kept tokens can form phrases).
        token_scores (Tensor or sequence): (L,) score of each token position, [CLS] at 0
            (L >= the caption's number of tokens; padding positions are ignored).
        threshold (float): the text threshold.
    Returns:
        (list[str], list[list[list[int]]]): distinct phrases (lowercased, in order of first
        appearance) and per phrase its ``[start, end)`` spans; both empty when no token passes.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"a caption to find phrases in must be a non-empty string: {caption!r}")
    if isinstance(token_scores, torch.Tensor):
        token_scores = token_scores.detach().float().cpu().tolist()
    encoding = _encode(tokenizer, caption, max_len)
    offsets = encoding["offset_mapping"]
    runs = phrase_runs(
        token_scores, encoding.word_ids(), encoding["special_tokens_mask"], threshold
    )
    return group_phrase_ranges(caption, [(offsets[a][0], offsets[b][1]) for a, b in runs])
