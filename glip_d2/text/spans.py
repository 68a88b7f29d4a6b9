"""Character spans of phrases: the one validator, and the phrases of a grounding record.

A phrase is a list of half-open ``[start, end)`` character ranges into its caption; a prompt's
``phrase_spans`` lists its phrases, and phrase ``k`` is class index ``k`` of the model
(docs/DESIGN.md, "input contract").
"""

__all__ = ["check_spans", "check_phrase_spans", "record_phrase_sets", "record_phrases"]


def _where(where):
    return f"{where}: " if where else ""


def check_spans(caption, spans, where=""):
    """Validate one phrase's spans against ``caption``.

    Args:
        caption (str): the prompt.
        spans (list[[int, int]]): the phrase's ``[start, end)`` ranges (at least one).
        where (str): names the input at fault in error messages (file, record, argument).
    Returns:
        list[list[int]]: the spans as ``[start, end]`` int pairs.
    Raises:
        ValueError: an empty list, a malformed or non-integer span, one outside
            ``0 <= start < end <= len(caption)``, or spans that cover only whitespace (no
            token to ground).
    """
    if not isinstance(spans, (list, tuple)) or not spans:
        raise ValueError(f"{_where(where)}expected a non-empty list of [start, end): {spans!r}")
    out = []
    for span in spans:
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ValueError(f"{_where(where)}span {span!r} is not [start, end] ({caption!r})")
        try:
            start, end = int(span[0]), int(span[1])
        except (TypeError, ValueError, OverflowError):
            start = end = None
        if start is None or start != span[0] or end != span[1]:  # None, NaN, 2.5, "3"
            raise ValueError(
                f"{_where(where)}span {span!r} is not [start, end] of integers ({caption!r})"
            )
        if not 0 <= start < end <= len(caption):
            raise ValueError(
                f"{_where(where)}span [{start}, {end}] lies outside the caption of "
                f"{len(caption)} characters: {caption!r}"
            )
        out.append([start, end])
    if not any(caption[start:end].strip() for start, end in out):
        raise ValueError(
            f"{_where(where)}spans {out} cover only whitespace of the caption {caption!r}"
        )
    return out


def check_phrase_spans(caption, phrase_spans, where=""):
    """Validate a prompt's ``phrase_spans`` (one entry per phrase) against ``caption``.

    Returns:
        list[list[list[int]]]: the spans as int pairs.
    Raises:
        ValueError: naming ``where`` and the phrase index ``phrase_spans[k]`` at fault.
    """
    if not isinstance(phrase_spans, (list, tuple)) or not phrase_spans:
        raise ValueError(
            f"{_where(where)}phrase_spans must be a non-empty list (one entry per phrase): "
            f"{phrase_spans!r}"
        )
    prefix = f"{where}: " if where else ""
    return [
        check_spans(caption, spans, f"{prefix}phrase_spans[{k}]")
        for k, spans in enumerate(phrase_spans)
    ]


def _overlaps(phrase, spans):
    return any(a < e and s < b for a, b in phrase for s, e in spans)


def _equal_phrase(phrases, spans):
    """Index of the phrase whose spans equal ``spans`` (as a list, else as a set), or None."""
    k = next((k for k, p in enumerate(phrases) if p == spans), None)
    if k is None:
        target = {tuple(s) for s in spans}
        k = next((k for k, p in enumerate(phrases) if {tuple(s) for s in p} == target), None)
    return k


def record_phrases(record, annotations, use_eval_phrases=False):
    """The phrases of a grounding record and the phrase of each of its annotations.

    Phrase ``k`` is the ``k``-th distinct ``tokens_positive`` list in annotation order; with
    ``use_eval_phrases`` (test time) the record's ``tokens_positive_eval`` replaces that list
    when present (MDETR's evaluation phrases, whose order may differ). An annotation belongs to
    the phrase whose spans equal its own (as a list, else as a set), else to the first one that
    overlaps them. The mapper builds the test prompt with this function and the grounding
    evaluators find the phrases of a GT box with :func:`record_phrase_sets`, which lists the
    same phrases, so the two always agree.

    Args:
        record (dict): a dataset record with ``caption``.
        annotations (list[dict]): the annotations to assign (each with ``tokens_positive``).
        use_eval_phrases (bool): prefer ``record["tokens_positive_eval"]``.
    Returns:
        (list[list[list[int]]], list[int]): the phrases and, per annotation, its phrase index.
    Raises:
        ValueError: a span outside the caption, or an annotation matching no phrase.
    """
    phrases, sets = record_phrase_sets(record, annotations, use_eval_phrases)
    return phrases, [found[0] for found in sets]


def record_phrase_sets(record, annotations, use_eval_phrases=True):
    """Like :func:`record_phrases` (the same phrases), but each annotation grounds *every*
    phrase it overlaps, for evaluation.

    MDETR's Flickr30K files give one annotation per box, whose ``tokens_positive`` holds every
    mention of its entity in the sentence ("a man ... the man"), while
    ``tokens_positive_eval`` holds one phrase per mention (ashkamath/mdetr
    scripts/pre-training/flickr_combined.py, ``convert``); the official evaluator scores each
    mention against the entity's boxes (microsoft/GLIP maskrcnn_benchmark/data/datasets/
    evaluation/flickr/flickr_eval.py, ``Flickr30kEntitiesRecallEvaluator.evaluate``). A phrase
    equal to the annotation's spans takes it alone; otherwise every overlapping phrase does.

    Returns:
        (list[list[list[int]]], list[list[int]]): the phrases and, per annotation, the
        indices of the phrases it grounds (at least one).
    Raises:
        ValueError: a span outside the caption, or an annotation matching no phrase.
    """
    caption = record.get("caption") or ""
    where = f"record {record.get('file_name', record.get('image_id'))!r}"
    own = [check_spans(caption, a["tokens_positive"], where) for a in annotations]
    phrases = []
    for spans in own:
        if spans not in phrases:
            phrases.append(spans)
    if use_eval_phrases and record.get("tokens_positive_eval"):
        phrases = [check_spans(caption, p, where) for p in record["tokens_positive_eval"]]
    box_phrases = []
    for spans in own:
        k = _equal_phrase(phrases, spans)
        found = [k] if k is not None else [k for k, p in enumerate(phrases) if _overlaps(p, spans)]
        if not found:
            raise ValueError(f"{where}: spans {spans} match no phrase of the caption {caption!r}")
        box_phrases.append(found)
    return phrases, box_phrases
