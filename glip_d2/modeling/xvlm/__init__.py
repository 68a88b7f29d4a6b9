"""X-VLM's multi-grained vision-language objectives (ITC, ITM, MLM) on the GLIP detector, off
unless ``MODEL.GLIP.XVLM`` gives them a weight (docs/XVLM.md)."""

from .contrastive import gather_with_grad, itc_loss, sample_hard_negatives
from .mlm import MLMHead, mask_tokens
from .objectives import XVLMObjectives, build_xvlm_objectives
from .texts import image_text, is_label_list, phrase_text, text_key

__all__ = [
    "MLMHead",
    "XVLMObjectives",
    "build_xvlm_objectives",
    "gather_with_grad",
    "image_text",
    "is_label_list",
    "itc_loss",
    "mask_tokens",
    "phrase_text",
    "sample_hard_negatives",
    "text_key",
]
