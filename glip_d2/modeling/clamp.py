"""The symmetric clamp the official head applies against fp16 overflow.

microsoft/GLIP bounds the fusion attention scores (maskrcnn_benchmark/utils/fuse_helper.py,
``BiMultiHeadAttention.forward``), the head's BERT layer (modeling/rpn/modeling_bert.py,
``BertSelfAttention``, ``BertIntermediate``, ``BertOutput``) and the dot-product logits
(modeling/rpn/vldyhead.py, ``VLDyHead.forward``) to +-50000 (``MODEL.GLIP.CLAMP_VALUE``).
"""

__all__ = ["clamp_abs"]


def clamp_abs(x, bound):
    """``x`` clamped to ``[-bound, bound]``; a ``bound`` of 0 turns the clamp off."""
    return x.clamp(min=-bound, max=bound) if bound else x
