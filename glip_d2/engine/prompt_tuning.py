"""Prompt tuning in training: which prompt the table is tuned for, and saving it at the end.

The file format and the loading are glip_d2/checkpoint/prompt_embedding.py.
"""

import logging
import os
from contextlib import nullcontext

from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..checkpoint.prompt_embedding import load_prompt_embedding, save_prompt_embedding
from ..text import build_detection_prompt

__all__ = ["PromptEmbeddingSaver", "maybe_load_prompt_embedding", "tuned_prompt"]

logger = logging.getLogger(__name__)

PROMPT_EMBEDDING_FILE = "prompt_embedding.safetensors"


def tuned_prompt(cfg):
    """The one prompt a prompt-tuning run trains on, or None when there is no single one.

    With ``DATASETS.GLIP.FIXED_TRAIN_PROMPT`` and one detection set in ``DATASETS.TRAIN``,
    every training image carries the same prompt: all ``thing_classes`` in id order with the
    set's ``prompt_overrides`` (as the mapper builds it). Sampled prompts (shuffled classes,
    negatives) or several sets give no single prompt.

    Returns:
        dict | None: ``{"caption", "phrase_spans", "phrase_names"}``.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not cfg.DATASETS.GLIP.FIXED_TRAIN_PROMPT or len(names) != 1:
        return None
    meta = MetadataCatalog.get(names[0])
    classes = meta.get("thing_classes", None)
    if not classes:
        return None
    caption, spans = build_detection_prompt(
        classes, cfg.DATASETS.GLIP.SEPARATOR, overrides=meta.get("prompt_overrides", None)
    )
    return {"caption": caption, "phrase_spans": spans, "phrase_names": list(classes)}


class PromptEmbeddingSaver(HookBase):
    """After a complete prompt-tuning run, write ``OUTPUT_DIR/prompt_embedding.safetensors``
    (the EMA weights when the trainer keeps an EMA) with the prompt it was tuned for."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.path = os.path.join(cfg.OUTPUT_DIR, PROMPT_EMBEDDING_FILE)

    def after_train(self):
        if self.trainer.iter + 1 < self.trainer.max_iter or not comm.is_main_process():
            return  # interrupted runs keep their periodic checkpoints only
        prompt = tuned_prompt(self.cfg)
        if prompt is None:
            logger.warning(
                "Prompt tuning without one fixed training prompt (DATASETS.GLIP."
                "FIXED_TRAIN_PROMPT and a single DATASETS.TRAIN set): the saved embedding "
                "applies to every prompt"
            )
        ema = getattr(self.trainer, "ema", None)
        model = self.trainer.model
        with ema.apply_to(model) if ema is not None else nullcontext():
            save_prompt_embedding(
                model, self.path, prompt, self.cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME
            )


def maybe_load_prompt_embedding(cfg, model):
    """Load ``MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING`` into ``model`` if set (after the
    weights); returns the :class:`~glip_d2.checkpoint.prompt_embedding.PromptEmbedding` or
    None."""
    path = cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING
    return load_prompt_embedding(model, path) if path else None
