"""Text prompts for detection data: category names -> caption + per-phrase char spans.

Spans are half-open ``[start, end)`` character ranges into the caption; phrase ``k`` of
``phrase_spans`` is class index ``k`` of the model (docs/DESIGN.md, "input contract").
"""

import logging
import re

from detectron2.utils.logger import log_first_n

__all__ = [
    "clean_name",
    "build_detection_prompt",
    "chunk_phrases",
    "count_prompt_tokens",
    "prompt_fits",
    "TrainingPromptSampler",
    "warn_vocabulary",
]

logger = logging.getLogger(__name__)


def clean_name(name: str) -> str:
    """The official category-name cleaning, quirks included (microsoft/GLIP
    maskrcnn_benchmark/data/datasets/od_to_grounding.py, ``clean_name``).

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


def build_detection_prompt(names, separator=". ", overrides=None, check_duplicates=True):
    """The evaluation / fine-tuning detection prompt (microsoft/GLIP maskrcnn_benchmark/data/
    datasets/od_to_grounding.py, ``convert_od_to_grounding_simple``).

    Args:
        names (list[str]): category names in prompt order (the caller sorts them by id).
        separator (str): joins consecutive entries; no trailing separator.
        overrides (dict[str, dict] | None): per-category ``{"prefix", "name", "suffix"}``
            as the official ``CAPTION_PROMPT``; the phrase span covers the name part only.
        check_duplicates (bool): warn about names identical after cleaning.

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
    if duplicates and check_duplicates:
        logger.warning(
            "Categories with identical prompt text after cleaning (the model cannot tell them "
            "apart): %s",
            duplicates,
        )
    return caption, spans


def warn_vocabulary(tokenizer, names):
    """Warn about category names the model cannot tell apart: names whose cleaned text gives
    the same word pieces (``"Dog"`` and ``"dog"`` for an uncased tokenizer, ``"bow_(weapon)"``
    and ``"bow_(decorative_ribbons)"``, two names made only of [UNK] tokens). Once per
    vocabulary and process, however many prompts or chunks the vocabulary makes.

    Names made only of [UNK] tokens are reported by :func:`~glip_d2.text.build_positive_map`,
    which sees every prompt, captions included.

    Returns:
        list[list[str]]: the groups of indistinguishable names (empty when none).
    """
    groups = {}
    for name in names:
        groups.setdefault(tuple(tokenizer.tokenize(clean_name(name))), []).append(name)
    clashes = [group for group in groups.values() if len(group) > 1]
    if clashes:
        log_first_n(
            logging.WARNING,
            f"Category names the model cannot tell apart (the same word pieces after "
            f"clean_name) in a vocabulary of {len(names)}: {clashes}",
            name=__name__,
            key="message",
        )
    return clashes


def count_prompt_tokens(tokenizer, text):
    """Number of word pieces of ``text`` without [CLS]/[SEP] (official ``len(tokenize(...))``)."""
    return len(tokenizer.tokenize(text))


def prompt_fits(tokenizer, caption, max_len):
    """Whether ``caption`` plus [CLS] and [SEP] fits in ``max_len`` tokens.

    The one test of "does this vocabulary need chunks": the official evaluation tokenizes
    detection prompts without truncation, so a longer prompt must be split, never cut.
    """
    return count_prompt_tokens(tokenizer, caption) + 2 <= max_len


def chunk_phrases(tokenizer, names, max_len=256, chunk_size=0, separator=". "):
    """Split ``names`` into consecutive chunks whose detection prompt fits ``max_len`` tokens.

    The length counted includes [CLS] and [SEP]. With ``chunk_size > 0`` a chunk also holds
    at most ``chunk_size`` names (the official ``TEST.CHUNKED_EVALUATION``; docs/
    OFFICIAL_BEHAVIOURS.md, "Detection prompts and chunks").

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
        verified.extend(_split_until_fits(tokenizer, names, chunk, max_len, separator))
    return verified


def _split_until_fits(tokenizer, names, chunk, max_len, separator):
    caption, _ = build_detection_prompt(
        [names[i] for i in chunk], separator, check_duplicates=False
    )
    if len(chunk) == 1 or prompt_fits(tokenizer, caption, max_len):
        return [chunk]
    out = [[chunk[0]]]
    for i in chunk[1:]:
        caption, _ = build_detection_prompt(
            [names[j] for j in out[-1] + [i]], separator, check_duplicates=False
        )
        if prompt_fits(tokenizer, caption, max_len):
            out[-1].append(i)
        else:
            out.append([i])
    return out


class TrainingPromptSampler:
    """Detection labels -> a shuffled grounding prompt with sampled negatives.

    The official ``convert_object_detection_to_grounding_optimized_for_od`` with shuffling
    (microsoft/GLIP maskrcnn_benchmark/data/datasets/od_to_grounding.py):

    1. Shuffle the positive classes; keep them while the running word-piece count of
       ``clean_name(name) + ". "`` stays <= ``max_tokens`` (254 = 256 - [CLS] - [SEP]). The
       positive length used below *includes* the first class that no longer fits (official quirk).
    2. ``k`` negatives: all ``min(num_negatives, C)`` with probability ``full_negative_prob``,
       else ``k ~ U{1..min(num_negatives, C)}``; drawn without replacement from the ``C``
       dataset classes, positives removed. (The official pool also holds a "__background__"
       id 0; D2 metadata has none, so here every draw is a real class.)
    3. Keep shuffled negatives while ``max_tokens - positive_length - sum(lengths) > 0``.
    4. Shuffle negatives + positives together and join the cleaned names with ``separator``.

    Args:
        tokenizer: a transformers tokenizer (only ``tokenize`` is used).
        class_names (list[str]): the dataset's ``thing_classes`` (contiguous ids).
    """

    def __init__(
        self,
        tokenizer,
        class_names,
        *,
        num_negatives=85,
        full_negative_prob=0.5,
        max_tokens=254,
        separator=". ",
        shuffle=True,
    ):
        self.class_names = list(class_names)
        if not self.class_names:
            raise ValueError("TrainingPromptSampler: the dataset has no class names")
        build_detection_prompt(self.class_names, check_duplicates=False)  # validates names
        warn_vocabulary(tokenizer, self.class_names)
        # Official lengths are of "name. " (the separator counted with each class).
        self.lengths = [
            count_prompt_tokens(tokenizer, clean_name(n) + ". ") for n in self.class_names
        ]
        self.num_negatives = num_negatives
        self.full_negative_prob = full_negative_prob
        self.max_tokens = max_tokens
        self.separator = separator
        self.shuffle = shuffle

    def __call__(self, positive_classes, rng):
        """Sample one prompt.

        Args:
            positive_classes (Iterable[int]): class ids of the image's boxes (repeats allowed).
            rng (random.Random): the randomness source (seed it for reproducible prompts).

        Returns:
            (caption, phrase_spans, phrase_classes): the caption, per phrase ``[[start, end)]``,
            and per phrase its class id. Classes of dropped positives are absent, so their
            boxes must be dropped by the caller.
        """
        num_classes = len(self.class_names)
        for c in set(positive_classes):
            if not 0 <= c < num_classes:
                raise ValueError(f"Class id {c} outside [0, {num_classes}) of the class names")
        positives = sorted(set(positive_classes))
        if self.shuffle:
            rng.shuffle(positives)
        kept, length = [], 0
        for c in positives:
            length += self.lengths[c]
            if length > self.max_tokens:
                break
            kept.append(c)

        full = min(self.num_negatives, num_classes)
        if full <= 0:
            k = 0
        elif rng.random() < self.full_negative_prob:
            k = full
        else:
            k = rng.randint(1, full)
        kept_set = set(kept)
        negatives = [c for c in rng.sample(range(num_classes), k) if c not in kept_set]
        if self.shuffle:
            rng.shuffle(negatives)
        else:
            negatives.sort()
        room = self.max_tokens - length
        screened = []
        for c in negatives:
            room -= self.lengths[c]
            if room <= 0:
                break
            screened.append(c)

        classes = screened + kept
        if self.shuffle:
            rng.shuffle(classes)
        if not classes:
            raise ValueError("TrainingPromptSampler: no class fits in the prompt")
        caption, spans = build_detection_prompt(
            [self.class_names[c] for c in classes], self.separator, check_duplicates=False
        )
        return caption, spans, classes
