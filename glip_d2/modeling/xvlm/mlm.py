"""Masked language modelling for the X-VLM objectives: token masking and the prediction head.

Masking follows X-VLM's count rule (zengyan-97/X-VLM dataset/pretrain_dataset.py,
``TextMaskingGenerator``) with BERT's replacement rule: each text gets
``min(max_masks, max(1, round(prob * n)))`` masked positions, drawn uniformly among its n real
tokens (never [CLS], [SEP], [PAD] or another special token; single word pieces, without
X-VLM's whole-word and n-gram spans); a
masked position becomes [MASK] with probability 0.8, a random non-special token with 0.1 and
stays unchanged with 0.1. microsoft/GLIP's own option (maskrcnn_benchmark/modeling/detector/
generalized_vl_rcnn.py, ``random_word``) masks the detection pass's prompt itself, each
non-pad token with probability 0.15 ([CLS]/[SEP] included); here a separate copy is masked so
the detection loss sees the same prompt as without MLM (docs/XVLM.md).

The head is BERT's (transformers ``BertPredictionHeadTransform``: dense, activation, LayerNorm)
with the decoder tied to the text encoder's word embeddings and a per-token bias, as in
``BertLMPredictionHead``; its weights start from the text model's ``cls.predictions.*`` where
the checkpoint has them (bert-base-uncased does, the bundled MiniLM does not).
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from ...text.tokenizer import resolve_model_folder

__all__ = ["mask_tokens", "MLMHead", "pretrained_mlm_head_state"]

logger = logging.getLogger(__name__)

IGNORE = -100  # label of unmasked positions (F.cross_entropy's ignore_index)


def mask_tokens(
    input_ids,
    attention_mask,
    *,
    mask_token_id,
    special_ids,
    vocab_size,
    prob=0.15,
    max_masks=10,
    generator=None,
):
    """Mask a copy of ``input_ids`` for MLM.

    Args:
        input_ids, attention_mask (Tensor): (B, L) int64.
        mask_token_id (int): the tokenizer's [MASK].
        special_ids (Iterable[int]): ids never masked nor drawn as random replacements.
        vocab_size (int): random replacements are drawn from ``[0, vocab_size)``.
        prob (float), max_masks (int): masked positions per text, see the module docstring.
        generator (torch.Generator | None): randomness source (CPU).
    Returns:
        (masked_ids (B, L), labels (B, L)): labels hold the original id at masked positions
        and -100 elsewhere.
    """
    ids = input_ids.clone().cpu()
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long)
    maskable = attention_mask.cpu().bool() & ~torch.isin(ids, special)
    labels = torch.full_like(ids, IGNORE)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    replacements = allowed.nonzero().squeeze(1)
    for b in range(ids.shape[0]):
        candidates = maskable[b].nonzero().squeeze(1)
        if candidates.numel() == 0:
            continue
        count = min(max_masks, max(1, round(prob * candidates.numel())))
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
        labels[b, chosen] = ids[b, chosen]
        rule = torch.rand(count, generator=generator)
        to_mask = chosen[rule < 0.8]
        to_random = chosen[(rule >= 0.8) & (rule < 0.9)]
        ids[b, to_mask] = mask_token_id
        drawn = torch.randint(replacements.numel(), (to_random.numel(),), generator=generator)
        ids[b, to_random] = replacements[drawn]
    return ids.to(input_ids.device), labels.to(input_ids.device)


def pretrained_mlm_head_state(model_name, weights_from_checkpoint=False):
    """``cls.predictions.*`` of the text model's checkpoint as MLMHead state, or None.

    Only local files are read (a folder, or the hub cache of a model already downloaded for the
    text encoder); with ``weights_from_checkpoint`` nothing is looked up.
    """
    if weights_from_checkpoint:
        return None
    from transformers.modeling_utils import load_state_dict
    from transformers.utils import cached_file

    folder = resolve_model_folder(model_name)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if folder is not None:
            path = folder / filename
            path = str(path) if path.is_file() else None
        else:
            try:
                path = cached_file(
                    model_name,
                    filename,
                    local_files_only=True,
                    _raise_exceptions_for_missing_entries=False,
                )
            except (OSError, ValueError):
                path = None
        if path is None:
            continue
        state = load_state_dict(path)
        prefix = "cls.predictions."
        head = {}
        for key, value in state.items():
            if key.startswith(prefix):
                name = key[len(prefix) :].replace(".gamma", ".weight").replace(".beta", ".bias")
                if not name.startswith("decoder."):  # tied to the word embeddings
                    head[name] = value
        return head or None
    return None


class MLMHead(nn.Module):
    """BERT's MLM prediction head with the decoder tied to the word embeddings."""

    def __init__(self, text_config, pretrained_state=None):
        """
        Args:
            text_config: the text encoder's transformers config (hidden_size, hidden_act,
                layer_norm_eps, vocab_size).
            pretrained_state (dict | None): ``transform.*`` and ``bias`` to start from.
        """
        super().__init__()
        self.transform = BertPredictionHeadTransform(text_config)
        self.bias = nn.Parameter(torch.zeros(text_config.vocab_size))
        if pretrained_state:
            missing, unexpected = self.load_state_dict(pretrained_state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"the text model's MLM head does not fit BERT's layout: missing {missing}, "
                    f"unexpected {unexpected}"
                )
            logger.info("MLM head initialised from the text model's cls.predictions weights")

    def forward(self, hidden, word_embeddings):
        """
        Args:
            hidden (Tensor): (M, D) fused features of the masked positions.
            word_embeddings (Tensor): (V, D) the text encoder's input embedding matrix.
        Returns:
            Tensor: (M, V) token logits.
        """
        return F.linear(self.transform(hidden), word_embeddings, self.bias)
