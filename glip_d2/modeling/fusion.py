"""Bidirectional image-text cross-attention of GLIP's deep fusion (microsoft/GLIP
maskrcnn_benchmark/utils/fuse_helper.py, ``BiMultiHeadAttention`` and
``BiAttentionBlockForCheckpoint``; docs/OFFICIAL_BEHAVIOURS.md, "Fusion residual and masks").

One block updates all five visual levels and the text features together: the visual tokens of
P3..P7 are concatenated and attend jointly to the text tokens, and the text tokens attend to all
visual tokens. Parameter names follow the official ``BiAttentionBlockForCheckpoint`` so that
official checkpoints load by renaming prefixes only (docs/DESIGN.md).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .clamp import clamp_abs

__all__ = ["BiMultiHeadAttention", "VLFusionBlock"]

# Added to the image->text logits of padded tokens; the official value (not -inf, so a caption
# without any valid token still gives a finite softmax).
_PAD_TOKEN_BIAS = -9e15


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention computed once and used in both directions.

    The visual queries and text keys give one score matrix ``S`` (B*heads, N, L). Its softmax
    over text tokens attends vision to text; the softmax of ``S^T`` over visual locations
    attends text to vision.
    """

    def __init__(self, v_dim, l_dim, embed_dim, num_heads, dropout=0.1, clamp_value=50000.0):
        """
        Args:
            v_dim (int): visual channel count (the head width).
            l_dim (int): text hidden size.
            embed_dim (int): attention width (2048 in the official model), split in heads.
            num_heads (int): number of heads; must divide ``embed_dim``.
            dropout (float): dropout on both attention maps, training only.
            clamp_value (float): attention logits are clamped to +-clamp_value (0 disables).
        """
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"fusion embed_dim={embed_dim} is not divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.embed_dim = embed_dim
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp_value = clamp_value

        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for layer in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _split_heads(self, x):
        # (B, T, E) -> (B*heads, T, head_dim)
        b, t, _ = x.shape
        return (
            x.view(b, t, self.num_heads, self.head_dim)
            .transpose(1, 2)
            .reshape(b * self.num_heads, t, -1)
        )

    def _merge_heads(self, x, batch):
        # (B*heads, T, head_dim) -> (B, T, E)
        t = x.shape[1]
        return (
            x.view(batch, self.num_heads, t, self.head_dim)
            .transpose(1, 2)
            .reshape(batch, t, self.embed_dim)
        )

    def forward(self, v, l, text_mask=None):
        """
        Args:
            v (Tensor): (B, N, v_dim) normalised visual tokens of all levels.
            l (Tensor): (B, L, l_dim) normalised text tokens.
            text_mask (Tensor or None): (B, L), 1 for valid tokens, 0 for padding.
        Returns:
            (Tensor, Tensor): visual update (B, N, v_dim) and text update (B, L, l_dim).
        """
        batch, num_v, _ = v.shape
        num_l = l.shape[1]
        query = self._split_heads(self.v_proj(v) * self.scale)
        key = self._split_heads(self.l_proj(l))
        value_v = self._split_heads(self.values_v_proj(v))
        value_l = self._split_heads(self.values_l_proj(l))

        scores = clamp_abs(torch.bmm(query, key.transpose(1, 2)), self.clamp_value)  # (B*h, N, L)

        # Text -> image: every text token (padding included) queries all locations; the row max
        # is subtracted explicitly, as in the official code, before the second clamp.
        scores_l = scores.transpose(1, 2)
        scores_l = clamp_abs(scores_l - scores_l.max(dim=-1, keepdim=True)[0], self.clamp_value)
        attn_l = scores_l.softmax(dim=-1)

        # Image -> text: padded tokens get -9e15, valid ones +1 (the official long mask).
        if text_mask is not None:
            # Built in (at least) fp32: -9e15 overflows fp16, and fp16 scores are promoted.
            bias_dtype = torch.promote_types(scores.dtype, torch.float32)
            bias = text_mask.to(bias_dtype).masked_fill(text_mask == 0, _PAD_TOKEN_BIAS)
            scores = (
                scores.view(batch, self.num_heads, num_v, num_l) + bias[:, None, None, :]
            ).view(batch * self.num_heads, num_v, num_l)
        attn_v = scores.softmax(dim=-1).to(value_l.dtype)

        attn_v = F.dropout(attn_v, p=self.dropout, training=self.training)
        attn_l = F.dropout(attn_l, p=self.dropout, training=self.training)
        out_v = self.out_v_proj(self._merge_heads(torch.bmm(attn_v, value_l), batch))
        out_l = self.out_l_proj(self._merge_heads(torch.bmm(attn_l, value_v), batch))
        return out_v, out_l


class VLFusionBlock(nn.Module):
    """GLIP's early-fusion block (official ``VLFuse`` with ``b_attn``, type "MHA-B").

    Residuals are added to the LayerNorm'ed inputs (not the raw inputs), scaled by learned
    per-channel ``gamma_v`` / ``gamma_l``.
    """

    def __init__(
        self,
        v_dim,
        l_dim,
        embed_dim,
        num_heads,
        dropout=0.1,
        init_layer_scale=1.0 / 6,
        clamp_value=50000.0,
    ):
        """
        Args:
            v_dim, l_dim, embed_dim, num_heads, dropout, clamp_value: see BiMultiHeadAttention.
            init_layer_scale (float): initial value of gamma_v / gamma_l (1 / number of layers).
        """
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout, clamp_value)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), float(init_layer_scale)))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), float(init_layer_scale)))

    def forward(self, features, hidden, text_mask):
        """
        Args:
            features (list[Tensor]): per level (B, v_dim, H_l, W_l).
            hidden (Tensor): (B, L, l_dim) text features.
            text_mask (Tensor): (B, L), 1 for valid tokens.
        Returns:
            (list[Tensor], Tensor): fused visual features (same shapes) and text (B, L, l_dim).
        """
        sizes = [f.shape[-2:] for f in features]
        # Row-major flatten per level, then all levels jointly; padded pixels are not masked.
        v = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(hidden)
        delta_v, delta_l = self.attn(v, l, text_mask)
        v = v + self.gamma_v * delta_v
        l = l + self.gamma_l * delta_l

        v = v.transpose(1, 2)
        out, start = [], 0
        for h, w in sizes:
            out.append(v[:, :, start : start + h * w].reshape(v.shape[0], v.shape[1], h, w))
            start += h * w
        return out, l
