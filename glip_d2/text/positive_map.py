"""Char spans -> token positive map: the one implementation every path uses.

Official counterpart: microsoft/GLIP maskrcnn_benchmark/data/datasets/modulated_coco.py,
``create_positive_map`` (docs/OFFICIAL_BEHAVIOURS.md, "Positive maps").
"""

import logging

import torch
from detectron2.utils.logger import log_first_n

from .spans import check_phrase_spans

__all__ = ["build_positive_map", "span_token_range"]


def _char_to_token(encoding, positions):
    for pos in positions:
        if pos < 0:
            continue
        tok = encoding.char_to_token(pos)
        if tok is not None:
            return tok
    return None


def span_token_range(encoding, start, end):
    """Inclusive token range ``(first, last)`` of the char span ``[start, end)``, or None.

    The official fallbacks: ``start``, ``start+1``, ``start+2`` for the first token and
    ``end-1``, ``end-2``, ``end-3`` for the last one, so that a span beginning or ending on a
    space or separator still finds its word pieces. Token indices include the [CLS] offset.
    """
    first = _char_to_token(encoding, (start, start + 1, start + 2))
    last = _char_to_token(encoding, (end - 1, end - 2, end - 3))
    if first is None or last is None:
        return None
    return first, last


def _tokenize(tokenizer, caption, max_len):
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"build_positive_map needs a fast tokenizer (char offsets); got {type(tokenizer)}"
        )
    return tokenizer(caption, max_length=max_len, truncation=True)


def build_positive_map(tokenizer, caption, phrase_spans, max_len=256):
    """Binary map from phrases to the word pieces they cover.

    Args:
        tokenizer: a transformers *fast* tokenizer.
        caption (str): the prompt.
        phrase_spans (list[list[[int, int]]]): per phrase, its ``[start, end)`` char spans.
        max_len (int): token width (256 in GLIP); the caption is tokenised with truncation.

    Returns:
        FloatTensor (P, max_len) of 0/1: row ``k`` marks phrase ``k``'s tokens (inclusive end).

    Raises:
        ValueError: a span outside the caption, or a phrase covering no token (the official
            code leaves such a row empty, which turns the phrase's score into NaN).

    Warns (once per message and process): a phrase that keeps some of its spans but loses
    others (to the truncation at ``max_len`` tokens, or finding no token), and a phrase made
    only of [UNK] tokens (emoji, or characters the tokenizer's vocabulary lacks): the model
    cannot read it.
    """
    phrase_spans = check_phrase_spans(caption, phrase_spans)
    encoding = _tokenize(tokenizer, caption, max_len)
    out = torch.zeros((len(phrase_spans), max_len), dtype=torch.float32)
    for k, spans in enumerate(phrase_spans):
        lost = []
        for start, end in spans:
            rng = span_token_range(encoding, start, end)
            if rng is not None:
                out[k, rng[0] : rng[1] + 1] = 1.0
            else:
                lost.append([start, end])
        texts = [caption[s:e] for s, e in spans]
        if not out[k].any():
            raise ValueError(
                f"Phrase {k} {texts!r} covers no token of the caption {caption!r} "
                f"(truncated at {max_len} tokens)"
            )
        if lost:
            _warn(
                f"Phrase {k} {texts!r} of the caption {_short(caption)!r} loses its spans {lost} "
                f"({_why_lost(encoding, lost, max_len)}); it is scored on its other spans"
            )
    _warn_unknown(tokenizer, encoding, out, phrase_spans, caption)
    return out


def _short(text, n=80):
    return text if len(text) <= n else text[: n - 3] + "..."


def _warn(message):
    log_first_n(logging.WARNING, message, name=__name__, key="message")


def _why_lost(encoding, lost, max_len):
    """Why spans found no token: the truncation when one ends past the last kept token."""
    kept_end = max((e for s, e in encoding.encodings[0].offsets if e > s), default=0)
    if any(end > kept_end for _, end in lost):
        return f"cut by the truncation of the caption at {max_len} tokens"
    return "no token found for them"


def _warn_unknown(tokenizer, encoding, positive_map, phrase_spans, caption):
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    ids = torch.as_tensor(encoding.input_ids)
    known = ids != unk
    for k, row in enumerate(positive_map[:, : len(ids)].bool()):
        if not (row & known).any():
            texts = [caption[s:e] for s, e in phrase_spans[k]]
            _warn(
                f"Phrase {texts!r} is made only of [UNK] tokens: the tokenizer knows none of its "
                "characters (emoji, or a script its vocabulary lacks), so the model cannot read it"
            )
