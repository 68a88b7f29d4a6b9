"""The BERT layer on the text path of GLIP's head (microsoft/GLIP maskrcnn_benchmark/modeling/
rpn/vldyhead.py, ``BertEncoderLayer``, with the layers of modeling/rpn/modeling_bert.py).

A standard post-LayerNorm BERT encoder layer with the official head's extra clamps: the
attention scores are clamped before the padding mask is added, and the feed-forward path is
clamped in four places. Parameter names are HuggingFace ``BertLayer``'s, so official head
checkpoints load unchanged. Written without transformers' layer classes, whose signatures change
between versions.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clamp import clamp_abs

__all__ = ["TextLayerConfig", "ClampedBertLayer"]

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass(frozen=True)
class TextLayerConfig:
    """Sizes of the head's text layer; they follow the text encoder's config."""

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"

    @classmethod
    def from_hf(cls, config):
        """Build from a transformers ``BertConfig``-like object (or a dict with its fields)."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        fields = {name: get(name, default) for name, default in cls().__dict__.items()}
        return cls(**fields)

    @classmethod
    def for_hidden_size(cls, hidden_size):
        """BERT-family defaults (12 heads, 4x wide feed-forward) for a given width.

        Matches bert-base-uncased (768) and MiniLM-L6-H384 (384); use ``from_hf`` with the
        real encoder config whenever it is available.
        """
        return cls(hidden_size=hidden_size, intermediate_size=4 * hidden_size)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: TextLayerConfig, clamp_value):
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads != 0:
            raise ValueError(
                f"text hidden_size={cfg.hidden_size} is not divisible by "
                f"num_attention_heads={cfg.num_attention_heads}"
            )
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        self.clamp_value = clamp_value

    def _heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden, additive_mask):
        q, k, v = (
            self._heads(self.query(hidden)),
            self._heads(self.key(hidden)),
            self._heads(self.value(hidden)),
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = clamp_abs(scores, self.clamp_value)
        probs = self.dropout((scores + additive_mask).softmax(dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2)
        return context.reshape(hidden.shape)


class _SelfOutput(nn.Module):
    def __init__(self, cfg: TextLayerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: TextLayerConfig, clamp_value):
        super().__init__()
        self.self = _SelfAttention(cfg, clamp_value)
        self.output = _SelfOutput(cfg)

    def forward(self, hidden, additive_mask):
        return self.output(self.self(hidden, additive_mask), hidden)


class _Intermediate(nn.Module):
    def __init__(self, cfg: TextLayerConfig, clamp_value):
        super().__init__()
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"text layer hidden_act={cfg.hidden_act!r} unsupported; "
                f"known: {sorted(_ACTIVATIONS)}"
            )
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.clamp_value = clamp_value

    def forward(self, x):
        return clamp_abs(self.act(clamp_abs(self.dense(x), self.clamp_value)), self.clamp_value)


class _Output(nn.Module):
    def __init__(self, cfg: TextLayerConfig, clamp_value):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.clamp_value = clamp_value

    def forward(self, x, residual):
        x = clamp_abs(self.dropout(self.dense(x)), self.clamp_value)
        return clamp_abs(self.LayerNorm(x + residual), self.clamp_value)


class ClampedBertLayer(nn.Module):
    """One BERT encoder layer with the official head's clamps.

    The feed-forward clamps are unconditional in the official code; ``clamp_value`` (the
    config's CLAMP_VALUE) sets their bound as well as the attention-score clamp.
    """

    def __init__(self, cfg: TextLayerConfig, clamp_value=50000.0):
        super().__init__()
        self.attention = _Attention(cfg, clamp_value)
        self.intermediate = _Intermediate(cfg, clamp_value)
        self.output = _Output(cfg, clamp_value)

    def zero_residual_branches(self):
        """Zero the output projections of the attention and feed-forward branches: the layer
        then computes ``LayerNorm(LayerNorm(x))`` (standardises each token) until they train,
        as ReZero / zero-init residual schemes start deep stacks."""
        for linear in (self.attention.output.dense, self.output.dense):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden, text_mask):
        """
        Args:
            hidden (Tensor): (B, L, D) text features.
            text_mask (Tensor): (B, L), 1 for valid tokens, 0 for padding.
        Returns:
            Tensor: (B, L, D).
        """
        # The HF extended mask: 0 for valid keys, the dtype minimum for padded ones.
        additive = (1.0 - text_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(
            hidden.dtype
        ).min
        attended = self.attention(hidden, additive)
        return self.output(self.intermediate(attended), attended)
