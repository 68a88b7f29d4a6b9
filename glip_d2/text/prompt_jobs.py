"""Prompt jobs: which prompts the head runs for each image of a batch, and their positive maps.

Each image of a batch becomes one or more *prompt jobs*: one pass of the fused head with one
prompt. An image given ``caption`` + ``phrase_spans`` has one job; an image given
``class_names`` has one job per chunk of its vocabulary (one when the detection prompt fits
in ``max_len`` tokens and no ``chunk_size`` is set).
"""

from collections import OrderedDict
from typing import NamedTuple

from .positive_map import build_positive_map
from .prompts import build_detection_prompt, chunk_phrases, prompt_fits, warn_vocabulary
from .spans import check_phrase_spans

__all__ = ["PromptJob", "PromptJobBuilder"]


class PromptJob(NamedTuple):
    """One (image, prompt) pass of the head.

    ``phrase_ids[k]`` is the image-level class index of the prompt's phrase ``k``.
    """

    image_index: int
    caption: str
    phrase_spans: tuple
    phrase_ids: tuple


def _freeze_spans(phrase_spans):
    return tuple(tuple(tuple(int(v) for v in span) for span in spans) for spans in phrase_spans)


class _LRU(OrderedDict):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class PromptJobBuilder:
    """Turns input dicts into prompt jobs and builds (cached) binary positive maps."""

    def __init__(self, tokenizer, max_len=256, chunk_size=0, separator=". ", cache_size=64):
        """
        Args:
            tokenizer: the language backbone's fast tokenizer.
            max_len (int): token width of a prompt (MAX_QUERY_LEN).
            chunk_size (int): at most this many class names per prompt (0: as many as fit).
            separator (str): joins class names in a detection prompt.
            cache_size (int): vocabularies and positive maps remembered between calls.
        """
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.chunk_size = chunk_size
        self.separator = separator
        self._vocab_cache = _LRU(cache_size)
        self._map_cache = _LRU(cache_size)

    def _vocabulary_prompts(self, names):
        """[(caption, spans, phrase_ids)] covering ``names`` in order, one per chunk."""
        caption, spans = build_detection_prompt(names, self.separator, check_duplicates=False)
        warn_vocabulary(self.tokenizer, names)  # once for the vocabulary, not per chunk
        if self.chunk_size <= 0 and prompt_fits(self.tokenizer, caption, self.max_len):
            return [(caption, _freeze_spans(spans), tuple(range(len(names))))]
        out = []
        for chunk in chunk_phrases(
            self.tokenizer, names, self.max_len, self.chunk_size, self.separator
        ):
            caption, spans = build_detection_prompt(
                [names[i] for i in chunk], self.separator, check_duplicates=False
            )
            out.append((caption, _freeze_spans(spans), tuple(chunk)))
        return out

    def jobs(self, index, inputs, allow_chunks=True):
        """
        Args:
            index (int): the image's position in the batch (for messages and the jobs).
            inputs (dict): one input dict (docs/DESIGN.md contract).
            allow_chunks (bool): False in training, where one prompt per image is required.
        Returns:
            list[PromptJob]
        """
        has_caption, has_names = "caption" in inputs, "class_names" in inputs
        if has_caption == has_names:
            raise ValueError(
                f"image {index}: give either 'caption' + 'phrase_spans' or 'class_names' "
                f"(got keys {sorted(inputs)})"
            )
        if has_names:
            names = inputs["class_names"]
            if isinstance(names, str) or not names:
                raise ValueError(
                    f"image {index}: 'class_names' must be a non-empty list of names, got {names!r}"
                )
            key = (tuple(names), self.max_len, self.chunk_size, self.separator)
            prompts = self._vocab_cache.get_or_make(
                key, lambda: self._vocabulary_prompts(list(names))
            )
            if len(prompts) > 1 and not allow_chunks:
                raise ValueError(
                    f"image {index}: {len(names)} class names need {len(prompts)} prompts of "
                    f"{self.max_len} tokens; training needs one prompt per image"
                )
            return [PromptJob(index, c, s, ids) for c, s, ids in prompts]

        caption, spans = inputs["caption"], inputs.get("phrase_spans")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"image {index}: empty prompt (caption={caption!r})")
        frozen = _freeze_spans(check_phrase_spans(caption, spans, f"image {index}"))
        return [PromptJob(index, caption, frozen, tuple(range(len(frozen))))]

    def positive_map(self, job):
        """(P, max_len) binary map of the job's phrases (a cached CPU tensor)."""

        def make():
            try:
                return build_positive_map(
                    self.tokenizer, job.caption, [list(s) for s in job.phrase_spans], self.max_len
                )
            except ValueError as e:
                raise ValueError(f"image {job.image_index}: {e}") from e

        return self._map_cache.get_or_make((job.caption, job.phrase_spans), make)
