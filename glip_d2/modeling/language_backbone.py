"""Language backbone: a HuggingFace BERT encoder returning GLIP's text features.

``cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME`` names the encoder (a hub name, a local folder or
``"bundled-minilm"``; see ``glip_d2/text/tokenizer.py``, which also loads its tokenizer).
With ``WEIGHTS_FROM_CHECKPOINT`` the encoder is only *built* (known architecture, random
weights, no download) because a GLIP checkpoint in ``MODEL.WEIGHTS`` carries its weights.
Official counterpart: microsoft/GLIP maskrcnn_benchmark/modeling/language_backbone/
bert_model.py, ``BertEncoder``.
"""

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from ..structures import TextFeatures
from ..text.tokenizer import (
    BERT_BASE_UNCASED_NAMES,
    load_fast_tokenizer,
    load_tokenizer,
    resolve_model_folder,
)

__all__ = [
    "LANGUAGE_BACKBONE_REGISTRY",
    "HFLanguageBackbone",
    "load_text_encoder",
    "build_language_backbone",
]

LANGUAGE_BACKBONE_REGISTRY = Registry("LANGUAGE_BACKBONE")
LANGUAGE_BACKBONE_REGISTRY.__doc__ = """
Registry for text encoders: ``obj(cfg)`` returns a module with ``tokenizer``,
``tokenize(captions)`` and ``forward(input_ids, attention_mask)`` (docs/DESIGN.md).
"""

# Architectures of hub models that can be built without downloading anything: BertConfig
# arguments of bert-base-uncased's published config.
_BERT_BASE_UNCASED = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)
_KNOWN_BERT_CONFIGS = {name: _BERT_BASE_UNCASED for name in BERT_BASE_UNCASED_NAMES}


def load_text_encoder(model_name, weights_from_checkpoint=False):
    """Build a ``BertModel`` (no pooler, eager attention) and its fast tokenizer.

    Args:
        model_name (str): hub name, local folder or ``"bundled-minilm"``.
        weights_from_checkpoint (bool): build the architecture with random weights instead of
            loading pretrained ones; no network access is needed.
    Returns:
        (transformers.BertModel, tokenizer)
    """
    from transformers import BertConfig, BertModel

    folder = resolve_model_folder(model_name)
    if weights_from_checkpoint:
        if folder is not None:
            config = BertConfig.from_pretrained(str(folder), local_files_only=True)
        elif model_name in _KNOWN_BERT_CONFIGS:
            config = BertConfig(**_KNOWN_BERT_CONFIGS[model_name])
        else:
            raise ValueError(
                f"MODEL.LANGUAGE_BACKBONE.MODEL_NAME={model_name!r}: WEIGHTS_FROM_CHECKPOINT "
                f"knows the architecture of {sorted(_KNOWN_BERT_CONFIGS)} only; give a local "
                "folder with config.json and tokenizer files instead"
            )
        # Eager attention matches the official encoder's arithmetic.
        config._attn_implementation = "eager"
        tokenizer = load_tokenizer(model_name, weights_from_checkpoint=True)
        return BertModel(config, add_pooling_layer=False), tokenizer

    source, local = (folder, True) if folder is not None else (model_name, False)
    try:
        model = BertModel.from_pretrained(
            str(source),
            add_pooling_layer=False,
            attn_implementation="eager",
            local_files_only=local,
        )
        tokenizer = load_fast_tokenizer(source, local)
    except OSError as e:
        raise OSError(
            f"could not load the text encoder MODEL.LANGUAGE_BACKBONE.MODEL_NAME={model_name!r} "
            "(offline? use a local folder, 'bundled-minilm', or WEIGHTS_FROM_CHECKPOINT=True)"
        ) from e
    return model, tokenizer


@LANGUAGE_BACKBONE_REGISTRY.register()
class HFLanguageBackbone(nn.Module):
    """BERT text encoder returning GLIP's token features.

    ``forward(input_ids, attention_mask)`` with both (B, L) gives a :class:`TextFeatures`:
    ``hidden`` (B, L, D), the last layer (pad rows not zeroed); ``embedded`` (B, L, D) =
    hidden * mask; ``mask`` (B, L), the attention mask.
    With a tunable linear table (prompt tuning), its first L rows are added to both
    (docs/OFFICIAL_BEHAVIOURS.md, "Text features"); with ``tuned_input_ids`` set, only to the
    rows whose tokens are that prompt.
    """

    @configurable
    def __init__(
        self,
        *,
        model,
        tokenizer,
        max_query_len=256,
        pad_to_max=False,
        freeze=False,
        tunable_linear=False,
        weights_from_checkpoint=False,
    ):
        """
        Args:
            model (transformers.BertModel): encoder without pooler.
            tokenizer: its fast tokenizer.
            max_query_len (int): captions are truncated to this many tokens.
            pad_to_max (bool): pad every batch to ``max_query_len`` tokens (the official
                layout) instead of to its longest caption; the results are the same up to
                float rounding (docs/DESIGN.md, "Text length"), only slower.
            freeze (bool): no gradients for the encoder, which also stays in eval mode.
            tunable_linear (bool): add the zero-initialised (1000, D) prompt-tuning table.
            weights_from_checkpoint (bool): ``model`` holds random weights that MODEL.WEIGHTS
                must replace (GLIPCheckpointer refuses a checkpoint without them).
        """
        super().__init__()
        self.weights_from_checkpoint = weights_from_checkpoint
        max_pos = model.config.max_position_embeddings
        if not 0 < max_query_len <= max_pos:
            raise ValueError(
                f"MAX_QUERY_LEN={max_query_len} must be in [1, {max_pos}] (position embeddings)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.pad_to_max = pad_to_max
        self.freeze = freeze
        if freeze:
            for p in self.model.parameters():
                p.requires_grad = False
            self.model.eval()
        self.tunable_linear = None
        if tunable_linear:
            if max_query_len > 1000:
                raise ValueError(f"TUNABLE_LINEAR holds 1000 rows; MAX_QUERY_LEN={max_query_len}")
            # Linear(D, 1000) so that the weight is (1000, D) as in official checkpoints.
            self.tunable_linear = nn.Linear(model.config.hidden_size, 1000, bias=False)
            nn.init.zeros_(self.tunable_linear.weight)
        # Token ids (L,) of the prompt a loaded prompt embedding was tuned for; None: the table
        # applies to every prompt (official). See glip_d2/checkpoint/prompt_embedding.py.
        self.register_buffer("tuned_input_ids", None, persistent=False)

    @classmethod
    def from_config(cls, cfg):
        lb = cfg.MODEL.LANGUAGE_BACKBONE
        model, tokenizer = load_text_encoder(lb.MODEL_NAME, lb.WEIGHTS_FROM_CHECKPOINT)
        if model.config.hidden_size != lb.HIDDEN_SIZE:
            raise ValueError(
                f"MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE={lb.HIDDEN_SIZE} but the text encoder "
                f"{lb.MODEL_NAME!r} has hidden size {model.config.hidden_size}"
            )
        return {
            "model": model,
            "tokenizer": tokenizer,
            "max_query_len": lb.MAX_QUERY_LEN,
            "pad_to_max": lb.PAD_TO_MAX,
            "freeze": lb.FREEZE,
            "tunable_linear": lb.TUNABLE_LINEAR or bool(lb.PROMPT_EMBEDDING),
            "weights_from_checkpoint": lb.WEIGHTS_FROM_CHECKPOINT,
        }

    @property
    def hidden_size(self):
        return self.model.config.hidden_size

    def train(self, mode=True):
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def tokenize(self, captions, device=None, pad_to_max=None):
        """Tokenize like the official model, truncating captions at MAX_QUERY_LEN tokens.

        Args:
            captions (str or list[str])
            device: where to put the tensors (default CPU).
            pad_to_max (bool or None): pad to MAX_QUERY_LEN (the official layout) instead of
                to the longest caption; None: the module's ``pad_to_max``.
        Returns:
            dict: ``input_ids`` and ``attention_mask``, (B, L) int64, L = the longest caption's
            token count (at most MAX_QUERY_LEN) or MAX_QUERY_LEN; padding after the tokens.
        """
        if isinstance(captions, str):
            captions = [captions]
        pad_to_max = self.pad_to_max if pad_to_max is None else pad_to_max
        if not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"tokenize expects a non-empty list of strings, got {captions!r}")
        enc = self.tokenizer(
            list(captions),
            max_length=self.max_query_len,
            padding="max_length" if pad_to_max else "longest",
            truncation=True,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
        }

    def forward(self, input_ids, attention_mask):
        """
        Args:
            input_ids, attention_mask: (B, L) integer tensors, L <= MAX_QUERY_LEN.
        Returns:
            TextFeatures: ``hidden`` (B, L, D), ``embedded`` (B, L, D), ``mask`` (B, L).
        """
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, L)"
            )
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embedded = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.tunable_linear is not None:
            prompt = self.tunable_linear.weight[: hidden.shape[1]].unsqueeze(0)
            if self.tuned_input_ids is None:
                hidden = hidden + prompt
                embedded = embedded + prompt
            else:  # only rows holding the tuned prompt; the others stay bit-identical
                use = self._is_tuned_prompt(input_ids, attention_mask)[:, None, None]
                hidden = torch.where(use, hidden + prompt, hidden)
                embedded = torch.where(use, embedded + prompt, embedded)
        return TextFeatures(hidden, embedded, attention_mask)

    def _is_tuned_prompt(self, input_ids, attention_mask):
        """(B,) bool: which rows of ``input_ids`` (B, L) hold exactly the tuned prompt's
        ``n`` real tokens (``tuned_input_ids``, (n,)), whatever the padding after them."""
        ids = self.tuned_input_ids.to(input_ids.device)
        n = ids.shape[0]
        if input_ids.shape[1] < n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        same_length = attention_mask.sum(dim=1) == n
        return same_length & (input_ids[:, :n] == ids).all(dim=1)


def build_language_backbone(cfg):
    """Build ``cfg.MODEL.LANGUAGE_BACKBONE.NAME`` from ``LANGUAGE_BACKBONE_REGISTRY``."""
    return LANGUAGE_BACKBONE_REGISTRY.get(cfg.MODEL.LANGUAGE_BACKBONE.NAME)(cfg)
