"""The model as Detectron2's evaluation loop calls it: inference mode and a prompt cache.

D2's ``inference_on_dataset`` calls ``model(inputs)`` per batch under ``torch.no_grad()``.
:class:`CachedPromptInference` is that callable for GLIP: the detector's ``inference`` in eval
mode, under ``torch.inference_mode()``, with one :class:`~glip_d2.modeling.TextFeatureCache`
for the whole evaluation, so the dataset's prompt (or every chunk of a large vocabulary) is
encoded once rather than once per image. The detections are the model's own.
"""

import torch
from detectron2.evaluation.evaluator import inference_context
from torch.nn.parallel import DistributedDataParallel

from ..modeling import TextFeatureCache

__all__ = ["CachedPromptInference"]


class CachedPromptInference:
    """``GLIPDetector`` (or its DDP wrapper) with a prompt cache, for evaluation loops.

    Not an ``nn.Module``, so D2's loop leaves the model's mode alone; each call runs in eval
    mode and restores the mode it found.
    """

    def __init__(self, model, cache_size=64):
        """
        Args:
            model (nn.Module): a ``GLIPDetector``, possibly wrapped in DDP.
            cache_size (int): prompts kept (MODEL.GLIP.PROMPT_CACHE_SIZE).
        """
        self.model = model
        self.text_cache = TextFeatureCache(cache_size)

    def __call__(self, batched_inputs):
        """``[{"instances": Instances}]`` per image, as ``model(batched_inputs)`` in eval mode."""
        model = self.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        with inference_context(model), torch.inference_mode():
            return model.inference(batched_inputs, text_cache=self.text_cache)
