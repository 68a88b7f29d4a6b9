"""A user's prompt in any accepted form -> the model's prompt fields and the phrase names.

Accepted forms (``GLIPPredictor`` and the demos take all of them):

* a list of class names: the model builds the detection prompt ("a. b. c") and splits a
  vocabulary longer than the text encoder's 256 tokens into chunks;
* a caption with explicit phrases: ``{"caption": str, "phrase_spans": [[[start, end), ...],
  ...]}`` (optional ``"phrases"``: names) or a ``(caption, phrase_spans)`` tuple;
* a free sentence (``str``): split into noun phrases (:mod:`glip_d2.text.noun_phrases`);
* ``None``: a default vocabulary given by the caller.
"""

from .noun_phrases import extract_noun_phrases
from .spans import check_phrase_spans

__all__ = ["normalize_prompt"]


def normalize_prompt(prompt, default_names=None):
    """Turn any accepted prompt form into the model's input fields and phrase names.

    Args:
        prompt: see the module docstring.
        default_names (list[str] or None): the vocabulary used when ``prompt`` is None.
    Returns:
        (dict, list[str]): either ``{"class_names": [...]}`` or ``{"caption": str,
        "phrase_spans": [...]}``, and the name of every phrase (class index -> name).
    Raises:
        ValueError / TypeError: naming the value at fault.
    """
    if prompt is None:
        if not default_names:
            raise ValueError(
                "no prompt given and cfg.DATASETS.TEST[0] has no thing_classes metadata; pass a "
                "prompt (class names, a caption with phrase_spans, or a sentence)"
            )
        prompt = list(default_names)
    if isinstance(prompt, str):
        names, spans = extract_noun_phrases(prompt)
        return {"caption": prompt, "phrase_spans": spans}, names
    if isinstance(prompt, dict):
        if "caption" not in prompt or "phrase_spans" not in prompt:
            raise ValueError(
                f"a dict prompt needs 'caption' and 'phrase_spans' keys, got {sorted(prompt)}"
            )
        caption = prompt["caption"]
        spans = check_phrase_spans(caption, prompt["phrase_spans"])
        names = prompt.get("phrases") or [caption[p[0][0] : p[0][1]] for p in spans]
        if len(names) != len(spans):
            raise ValueError(f"{len(names)} phrase names for {len(spans)} phrase_spans entries")
        return {"caption": caption, "phrase_spans": spans}, list(names)
    if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str):
        return normalize_prompt({"caption": prompt[0], "phrase_spans": prompt[1]})
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(n, str) for n in prompt):
        if any(not n.strip() for n in prompt):
            raise ValueError(f"class names must be non-empty strings: {list(prompt)!r}")
        return {"class_names": list(prompt)}, list(prompt)
    raise TypeError(
        "prompt must be a list of class names, a {'caption', 'phrase_spans'} dict, a "
        f"(caption, phrase_spans) tuple, a sentence or None; got {prompt!r}"
    )
