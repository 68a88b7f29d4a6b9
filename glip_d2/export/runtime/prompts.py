"""Prompts for the exported graph: glip_d2's prompt path (glip_d2/text/prompts.py,
prompt_jobs.py, spans.py, positive_map.py) on a ``tokenizers`` tokenizer."""

import re
import warnings

import numpy as np
import tokenizers

__all__ = ["PromptEncoder", "PromptPass", "check_phrase_spans", "clean_name", "detection_prompt"]


def clean_name(name):
    """The official category-name cleaning, quirks included (glip_d2/text/prompts.py)."""
    return re.sub(r"\(.*\)", "", name).replace("_", " ").replace("  ", " ")


def detection_prompt(names, separator):
    """Class names -> (caption, phrase spans) as glip_d2's ``build_detection_prompt``."""
    caption, spans = "", []
    for i, name in enumerate(names):
        text = clean_name(name)
        if not text.strip():
            raise ValueError(f"Category {name!r} (index {i}) gives an empty phrase after cleaning")
        spans.append([[len(caption), len(caption) + len(text)]])
        caption += text + (separator if i != len(names) - 1 else "")
    return caption, spans


def check_phrase_spans(caption, phrase_spans):
    """Integer [start, end) spans inside the caption covering some non-space character
    (glip_d2/text/spans.py); ValueError naming ``phrase_spans[k]`` otherwise."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"empty prompt (caption={caption!r})")
    if not isinstance(phrase_spans, (list, tuple)) or not phrase_spans:
        raise ValueError(
            f"phrase_spans must be a non-empty list (one entry per phrase): {phrase_spans!r}"
        )
    out = []
    for k, spans in enumerate(phrase_spans):
        where = f"phrase_spans[{k}]"
        if not isinstance(spans, (list, tuple)) or not spans:
            raise ValueError(f"{where}: expected a non-empty list of [start, end): {spans!r}")
        checked = []
        for span in spans:
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ValueError(f"{where}: span {span!r} is not [start, end] ({caption!r})")
            try:
                start, end = int(span[0]), int(span[1])
            except (TypeError, ValueError, OverflowError):
                start = end = None
            if start is None or start != span[0] or end != span[1]:  # None, NaN, 2.5, "3"
                raise ValueError(f"{where}: span {span!r} is not [start, end] of integers")
            if not 0 <= start < end <= len(caption):
                raise ValueError(
                    f"{where}: span [{start}, {end}] lies outside the caption of "
                    f"{len(caption)} characters: {caption!r}"
                )
            checked.append([start, end])
        if not any(caption[s:e].strip() for s, e in checked):
            raise ValueError(f"{where}: spans {checked} cover only whitespace of {caption!r}")
        out.append(checked)
    return out


class PromptPass:
    """One run of the graph: a caption's tokens, its (P, L) positive map and the class index
    of each of its phrases."""

    def __init__(self, caption, input_ids, attention_mask, positive_map, phrase_ids):
        self.caption = caption
        self.input_ids = input_ids  # (1, L) int64
        self.attention_mask = attention_mask  # (1, L) int64
        self.positive_map = positive_map  # (P, L) float32, 0/1
        self.phrase_ids = np.asarray(phrase_ids, dtype=np.int64)


class PromptEncoder:
    """glip_d2's prompt path (glip_d2/text/prompt_jobs.py, prompts.py, positive_map.py) on
    a ``tokenizers`` tokenizer."""

    def __init__(
        self, tokenizer_file, max_len, separator, chunk_size=0, pad_to_max=False, pad_id=0
    ):
        self.max_len, self.separator, self.chunk_size = max_len, separator, chunk_size
        self.pad_to_max, self.pad_id = pad_to_max, pad_id
        self.counter = tokenizers.Tokenizer.from_file(tokenizer_file)
        self.counter.no_padding()
        self.counter.no_truncation()
        self.tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_len)
        self.unk_id = self.tokenizer.token_to_id("[UNK]")

    def count(self, text):
        """Word pieces of ``text`` without [CLS]/[SEP]."""
        return len(self.counter.encode(text, add_special_tokens=False).ids)

    def fits(self, caption):
        return self.count(caption) + 2 <= self.max_len

    def chunks(self, names):
        """``chunk_phrases``: consecutive name indices per prompt of at most max_len tokens."""
        budget = self.max_len - 2
        lengths = []
        for i, name in enumerate(names):
            n = self.count(clean_name(name))
            if n > budget:
                raise ValueError(
                    f"Category {name!r} (index {i}) alone takes {n} tokens, more than the "
                    f"{budget} a prompt of max_len={self.max_len} holds"
                )
            lengths.append(n)
        sep_len = self.count(self.separator) if self.separator.strip() else 0
        chunks, current, total = [], [], 0
        for i, n in enumerate(lengths):
            extra = n + (sep_len if current else 0)
            full = self.chunk_size > 0 and len(current) >= self.chunk_size
            if current and (full or total + extra > budget):
                chunks.append(current)
                current, total, extra = [], 0, n
            current.append(i)
            total += extra
        chunks.append(current)
        verified = []  # split further where the tokenizer merges across separators
        for chunk in chunks:
            caption, _ = detection_prompt([names[i] for i in chunk], self.separator)
            if len(chunk) == 1 or self.fits(caption):
                verified.append(chunk)
                continue
            verified.append([chunk[0]])
            for i in chunk[1:]:
                caption, _ = detection_prompt(
                    [names[j] for j in verified[-1] + [i]], self.separator
                )
                if self.fits(caption):
                    verified[-1].append(i)
                else:
                    verified.append([i])
        return verified

    def encode(self, caption, phrase_spans, phrase_ids):
        """Tokens (truncated at max_len) and the binary positive map of one caption."""
        enc = self.tokenizer.encode(caption)
        ids = list(enc.ids)
        length = self.max_len if self.pad_to_max else len(ids)
        positive = np.zeros((len(phrase_spans), length), np.float32)
        for k, spans in enumerate(phrase_spans):
            lost = []
            for start, end in spans:
                first = _char_to_token(enc, (start, start + 1, start + 2))
                last = _char_to_token(enc, (end - 1, end - 2, end - 3))
                if first is None or last is None:
                    lost.append([start, end])
                else:
                    positive[k, first : last + 1] = 1.0
            texts = [caption[s:e] for s, e in spans]
            if not positive[k].any():
                raise ValueError(
                    f"Phrase {k} {texts!r} covers no token of the caption {caption!r} "
                    f"(truncated at {self.max_len} tokens)"
                )
            if lost:
                warnings.warn(
                    f"Phrase {k} {texts!r} loses its spans {lost} (truncation at "
                    f"{self.max_len} tokens, or no token found)",
                    stacklevel=3,
                )
            if not (positive[k, : len(ids)].astype(bool) & (np.asarray(ids) != self.unk_id)).any():
                warnings.warn(f"Phrase {texts!r} is made only of [UNK] tokens", stacklevel=3)
        mask = np.zeros((1, length), np.int64)
        mask[0, : len(ids)] = 1
        ids = np.asarray([ids + [self.pad_id] * (length - len(ids))], np.int64)
        return PromptPass(caption, ids, mask, positive, phrase_ids)

    def passes(self, prompt, default_names=()):
        """A prompt in any accepted form -> ([PromptPass], phrase names)."""
        if prompt is None:
            if not default_names:
                raise ValueError("no prompt given and the export has no default class names")
            prompt = list(default_names)
        if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str):
            prompt = {"caption": prompt[0], "phrase_spans": prompt[1]}
        if isinstance(prompt, dict):
            if "caption" not in prompt or "phrase_spans" not in prompt:
                raise ValueError(
                    f"a dict prompt needs 'caption' and 'phrase_spans', got {sorted(prompt)}"
                )
            caption = prompt["caption"]
            spans = check_phrase_spans(caption, prompt["phrase_spans"])
            names = list(prompt.get("phrases") or [caption[p[0][0] : p[0][1]] for p in spans])
            if len(names) != len(spans):
                raise ValueError(f"{len(names)} phrase names for {len(spans)} phrase_spans entries")
            return [self.encode(caption, spans, range(len(spans)))], names
        if isinstance(prompt, str):
            raise TypeError(
                f"free sentences ({prompt!r}) need glip_d2's noun phrases (spaCy); pass class "
                "names or {'caption': ..., 'phrase_spans': ...}"
            )
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(n, str) for n in prompt):
            names = list(prompt)
            if any(not n.strip() for n in names):
                raise ValueError(f"class names must be non-empty strings: {names!r}")
            caption, spans = detection_prompt(names, self.separator)
            if self.chunk_size <= 0 and self.fits(caption):
                return [self.encode(caption, spans, range(len(names)))], names
            out = []
            for chunk in self.chunks(names):
                caption, spans = detection_prompt([names[i] for i in chunk], self.separator)
                out.append(self.encode(caption, spans, chunk))
            return out, names
        raise TypeError(
            "prompt must be a list of class names, a {'caption', 'phrase_spans'} dict, a "
            f"(caption, phrase_spans) pair or None; got {prompt!r}"
        )


def _char_to_token(encoding, positions):
    """The official fallbacks of glip_d2.text.span_token_range."""
    for pos in positions:
        if pos >= 0:
            token = encoding.char_to_token(pos)
            if token is not None:
                return token
    return None
