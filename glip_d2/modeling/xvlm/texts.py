"""Which texts the X-VLM objectives read from a training batch (docs/XVLM.md, "Texts").

The objectives use the records the detector already trains on, no second data pipeline:

* the **image text** pairs with the whole image (ITC, ITM, MLM). A caption (grounding record)
  is its own image text. A *label list*, i.e. a prompt that is nothing but its phrases joined
  by the separator (a detection prompt with sampled negatives, a one-phrase region record), is
  not a description of the image: its image text is the list of the phrases that have a box,
  deduplicated and sorted ("blue star. red circle"), so two images with the same objects get
  the same text. A label list without any boxed phrase gives no image text.
* the **phrase text** of a box pairs with the box (box-level ITC): the text of its phrase's
  spans (joined by a space when a phrase has several).

Texts are identified by a process-independent 64-bit hash (:func:`text_key`), which decides
which pairs of a (gathered) batch are positives of each other.
"""

import hashlib

__all__ = ["is_label_list", "image_text", "phrase_text", "text_key"]


def phrase_text(caption, spans):
    """The text of one phrase: its spans' characters, joined by a space."""
    return " ".join(caption[int(s) : int(e)] for s, e in spans)


def is_label_list(caption, phrase_spans, separator=". "):
    """True when ``caption`` is exactly its phrases (one span each) joined by ``separator``.

    That is the form of every detection prompt (``build_detection_prompt``) and of a record
    whose caption is a single grounded phrase; a sentence has words outside its phrases.
    """
    if not phrase_spans or any(len(spans) != 1 for spans in phrase_spans):
        return False
    ordered = sorted((int(s[0][0]), int(s[0][1])) for s in phrase_spans)
    return caption == separator.join(caption[s:e] for s, e in ordered)


def image_text(caption, phrase_spans, boxed_phrases, separator=". "):
    """The text that pairs with the whole image.

    Args:
        caption (str): the prompt.
        phrase_spans: per phrase, its ``[start, end)`` char spans into ``caption``.
        boxed_phrases (Iterable[int]): indices of the phrases that have at least one box.
        separator (str): the detection prompts' separator (DATASETS.GLIP.SEPARATOR).
    Returns:
        str or None: the caption, the sorted boxed labels of a label list, or None (a label
        list without boxes).
    """
    if not is_label_list(caption, phrase_spans, separator):
        return caption
    labels = sorted({phrase_text(caption, phrase_spans[k]) for k in set(boxed_phrases)})
    return separator.join(labels) if labels else None


def text_key(text):
    """A 64-bit signed integer identifying ``text`` in every process (Python's ``hash`` is
    salted per process, so it cannot be compared across a gathered batch)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
