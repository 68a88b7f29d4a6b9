"""A tuned prompt embedding as a small file beside an unchanged base checkpoint.

Prompt tuning (``SOLVER.GLIP.TUNING prompt``, official ``language_prompt_v2``) trains one
tensor: the (1000, D) table ``language_backbone.tunable_linear.weight`` whose row ``i`` is added
to the text features of token position ``i`` of *every* prompt (official ``ADD_LINEAR_LAYER``,
microsoft/GLIP maskrcnn_benchmark/modeling/rpn/vldyhead.py). It is therefore tied to one
tokenised prompt, the fixed training prompt of the new domain: added to another prompt it
shifts that prompt's features by offsets learned for different words.

The file (safetensors) holds the first ``MAX_QUERY_LEN`` rows (``prompt_embedding``, (L, D)),
the token ids of the tuned prompt (``input_ids``, (L,)) and, as metadata, its caption, phrase
spans and phrase names, the text width D and L. Loaded into a model built with
``MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING`` (which adds the table), the offsets apply only to
batch rows whose tokens equal the tuned prompt, so every other prompt gives bit for bit the
base model's output. A file saved without a prompt applies to every prompt (official).
"""

import json
import logging
import os

import torch

__all__ = ["PromptEmbedding", "load_prompt_embedding", "save_prompt_embedding"]

logger = logging.getLogger(__name__)

FORMAT = "glip_d2.prompt_embedding"


def _language_backbone(model, path):
    lang = getattr(getattr(model, "module", model), "language_backbone", None)
    if lang is None or getattr(lang, "tunable_linear", None) is None:
        raise ValueError(
            f"prompt embedding {path}: the model has no prompt-tuning table; build it with "
            "MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING (or TUNABLE_LINEAR True)"
        )
    return lang


class PromptEmbedding:
    """What :func:`load_prompt_embedding` read: the tuned prompt and the file's metadata."""

    def __init__(self, path, prompt, metadata):
        self.path = path
        self.prompt = prompt  # {"caption", "phrase_spans", "phrase_names"} or None
        self.metadata = metadata

    def resolve(self, prompt):
        """The tuned caption (with its prompt overrides) for the tuned class-name list; any
        other prompt unchanged."""
        if (
            self.prompt is not None
            and isinstance(prompt, (list, tuple))
            and list(prompt) == self.prompt["phrase_names"]
        ):
            return {
                "caption": self.prompt["caption"],
                "phrase_spans": self.prompt["phrase_spans"],
                "phrases": list(self.prompt["phrase_names"]),
            }
        return prompt


def save_prompt_embedding(model, path, prompt=None, text_model=""):
    """Write the model's prompt-tuning table to ``path`` (.safetensors; atomically).

    Args:
        model: a GLIPDetector (or DDP-wrapped) with ``language_backbone.tunable_linear``.
        prompt (dict | None): ``{"caption", "phrase_spans", "phrase_names"}`` of the prompt the
            table was tuned for (see :func:`glip_d2.engine.prompt_tuning.tuned_prompt`); None:
            the table applies to every prompt.
        text_model (str): the text encoder's name, recorded for the reader.
    Returns:
        str: ``path``.
    """
    from safetensors.torch import save_file

    lang = _language_backbone(model, path)
    length = lang.max_query_len
    tensors = {
        "prompt_embedding": lang.tunable_linear.weight[:length].detach().float().cpu().clone()
    }
    metadata = {
        "format": FORMAT,
        "version": "1",
        "text_model": str(text_model),
        "hidden_size": str(lang.hidden_size),
        "max_query_len": str(length),
    }
    if prompt is not None:
        # Saved padded to MAX_QUERY_LEN (the file's format does not depend on PAD_TO_MAX).
        tokens = lang.tokenize([prompt["caption"]], pad_to_max=True)
        tensors["input_ids"] = tokens["input_ids"][0].cpu()
        metadata["prompt"] = json.dumps(
            {k: prompt[k] for k in ("caption", "phrase_spans", "phrase_names")}
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    logger.info(
        f"Saved the prompt embedding ({length} x {lang.hidden_size}) to {path}"
        + (f", tuned for {prompt['caption']!r}" if prompt else ", for every prompt")
    )
    return path


def load_prompt_embedding(model, path):
    """Load a :func:`save_prompt_embedding` file into ``model``'s prompt-tuning table.

    Checks the text width, the prompt length and that the model's tokenizer gives the recorded
    token ids for the recorded caption (same vocabulary). Rows past the file's length are zero.

    Returns:
        PromptEmbedding
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt embedding {path} not found")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("format") != FORMAT or "prompt_embedding" not in tensors:
        raise ValueError(f"{path} is not a glip_d2 prompt embedding (save_prompt_embedding)")
    lang = _language_backbone(model, path)
    weight = tensors["prompt_embedding"]
    if int(metadata["hidden_size"]) != lang.hidden_size or weight.shape[1] != lang.hidden_size:
        raise ValueError(
            f"prompt embedding {path} was tuned for a text width of {metadata['hidden_size']}, "
            f"the model's text encoder has {lang.hidden_size} "
            f"(MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE); use the base config it was tuned with"
        )
    if int(metadata["max_query_len"]) != lang.max_query_len:
        raise ValueError(
            f"prompt embedding {path} was tuned with MAX_QUERY_LEN={metadata['max_query_len']}, "
            f"the model uses {lang.max_query_len}"
        )
    prompt = json.loads(metadata["prompt"]) if "prompt" in metadata else None
    ids = None
    if prompt is not None:
        ids = tensors["input_ids"].long()
        tokens = lang.tokenize([prompt["caption"]], pad_to_max=True)
        if not torch.equal(tokens["input_ids"][0].cpu(), ids):
            raise ValueError(
                f"prompt embedding {path}: the model's tokenizer splits the tuned caption "
                f"{prompt['caption']!r} differently than the tokenizer it was tuned with "
                f"({metadata.get('text_model')!r})"
            )
    table = lang.tunable_linear.weight
    with torch.no_grad():
        table.zero_()
        table[: weight.shape[0]].copy_(weight.to(table))
    if ids is not None:  # the real tokens only: prompts are matched at any text length
        ids = ids[tokens["attention_mask"][0].cpu().bool()].to(table.device)
    lang.tuned_input_ids = ids
    if prompt is None:
        logger.warning(f"{path} records no prompt: its offsets apply to every prompt")
    else:
        logger.info(f"Loaded prompt embedding {path} for {prompt['caption']!r}")
    return PromptEmbedding(path, prompt, metadata)
