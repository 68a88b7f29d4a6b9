"""Text prompts for detection data: category names -> caption + per-phrase char spans.

Spans are half-open ``[start, end)`` character ranges into the caption; phrase ``k`` of
``phrase_spans`` is class index ``k`` of the model (docs/DESIGN.md, "input contract").
"""

import logging
import re

__all__ = [
    "clean_name",
    "build_detection_prompt",
    "chunk_phrases",
    "count_prompt_tokens",
]

logger = logging.getLogger(__name__)


def clean_name(name: str) -> str:
    """The official category-name cleaning (spec §5.1), quirks included.

    1. Remove a "(...)" substring with a *greedy* regex: everything from the first "(" to the
       last ")" goes, including what lies between two parenthesised groups.
    2. Replace every "_" by " ".
    3. Replace double spaces by single ones in *one* pass (three spaces become two).

    Surprising cases that the official prompts contain and that this function reproduces:

    * ``"mouse_(computer_equipment)_(wireless)"`` -> ``"mouse "`` (trailing space kept; the
      positive-map char fallbacks absorb it).
    * ``"bow_(weapon)"`` -> ``"bow "``; ``"a_(b)_c_(d)"`` -> ``"a "`` (greedy).
    * ``"a___b"`` -> ``"a  b"`` (three spaces after step 2, one pass of step 3).
    """
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    name = name.replace("  ", " ")
    return name


def _override_parts(name, overrides):
    """Return (prefix, text, suffix) for one category under the CAPTION_PROMPT overrides."""
    entry = (overrides or {}).get(name)
    if entry is None:
        return "", clean_name(name), ""
    if not isinstance(entry, dict):
        raise ValueError(
            f"Prompt override for category {name!r} must be a dict with keys "
            f"'prefix'/'name'/'suffix', got {entry!r}"
        )
    unknown = set(entry) - {"prefix", "name", "suffix"}
    if unknown:
        raise ValueError(f"Prompt override for category {name!r} has unknown keys {unknown}")
    text = entry["name"] if "name" in entry else clean_name(name)
    return entry.get("prefix", ""), text, entry.get("suffix", "")


def build_detection_prompt(names, separator=". ", overrides=None):
    """The evaluation / fine-tuning detection prompt (spec §6.4, official ``_simple`` variant).

    Args:
        names (list[str]): category names in prompt order (the caller sorts them by id).
        separator (str): joins consecutive entries; no trailing separator.
        overrides (dict[str, dict] | None): per-category ``{"prefix", "name", "suffix"}``
            as the official ``CAPTION_PROMPT``; the phrase span covers the name part only.

    Returns:
        (str, list[list[list[int]]]): caption and, per name, ``[[start, end)]``.
    """
    names = list(names)
    if not names:
        raise ValueError("build_detection_prompt: got an empty list of category names")
    caption = ""
    spans = []
    cleaned = {}
    for i, name in enumerate(names):
        prefix, text, suffix = _override_parts(name, overrides)
        if not text.strip():
            raise ValueError(
                f"Category {name!r} (index {i}) gives an empty phrase after clean_name; "
                "rename it or give a prompt override"
            )
        cleaned.setdefault(text.strip().lower(), []).append(name)
        caption += prefix
        start = len(caption)
        caption += text
        spans.append([[start, len(caption)]])
        caption += suffix
        if i != len(names) - 1:
            caption += separator
    duplicates = {k: v for k, v in cleaned.items() if len(v) > 1}
    if duplicates:
        logger.warning(
            "Categories with identical prompt text after cleaning (the model cannot tell them "
            "apart): %s",
            duplicates,
        )
    return caption, spans


def count_prompt_tokens(tokenizer, text):
    """Number of word pieces of ``text`` without [CLS]/[SEP] (official ``len(tokenize(...))``)."""
    return len(tokenizer.tokenize(text))


def chunk_phrases(tokenizer, names, max_len=256, chunk_size=0, separator=". "):
    """Split ``names`` into consecutive chunks whose detection prompt fits ``max_len`` tokens.

    The length counted includes [CLS] and [SEP]. With ``chunk_size > 0`` a chunk also holds
    at most ``chunk_size`` names (the official ``TEST.CHUNKED_EVALUATION``, spec §6.5).

    Returns:
        list[list[int]]: indices into ``names``, in order, covering every name once.
    """
    names = list(names)
    budget = max_len - 2
    lengths = []
    for i, name in enumerate(names):
        n = count_prompt_tokens(tokenizer, clean_name(name))
        if n > budget:
            raise ValueError(
                f"Category {name!r} (index {i}) alone takes {n} tokens, more than the "
                f"{budget} a prompt of max_len={max_len} holds"
            )
        lengths.append(n)
    sep_len = count_prompt_tokens(tokenizer, separator) if separator.strip() else 0

    chunks = []
    current, total = [], 0
    for i, n in enumerate(lengths):
        extra = n + (sep_len if current else 0)
        full = chunk_size > 0 and len(current) >= chunk_size
        if current and (full or total + extra > budget):
            chunks.append(current)
            current, total = [], 0
            extra = n
        current.append(i)
        total += extra
    if current:
        chunks.append(current)

    # Word pieces are additive across separators for BERT-style pre-tokenisers; verify on the
    # real prompt and split further where a tokenizer merges across boundaries.
    verified = []
    for chunk in chunks:
        verified.extend(_split_until_fits(tokenizer, names, chunk, budget, separator))
    return verified


def _split_until_fits(tokenizer, names, chunk, budget, separator):
    caption, _ = build_detection_prompt([names[i] for i in chunk], separator)
    if len(chunk) == 1 or count_prompt_tokens(tokenizer, caption) <= budget:
        return [chunk]
    out = [[chunk[0]]]
    for i in chunk[1:]:
        caption, _ = build_detection_prompt([names[j] for j in out[-1] + [i]], separator)
        if count_prompt_tokens(tokenizer, caption) <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out
