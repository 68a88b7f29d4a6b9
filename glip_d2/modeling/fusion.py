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

__all__ = ["FUSION_IMPLS", "BiMultiHeadAttention", "VLFusionBlock"]

# Added to the image->text logits of padded tokens; the official value (not -inf, so a caption
# without any valid token still gives a finite softmax).
_PAD_TOKEN_BIAS = -9e15


FUSION_IMPLS = ("auto", "reassociated", "direct")


def _text_bias(text_mask, scores_dtype):
    """(B, L) additive bias of the image->text logits: +1 on valid tokens, -9e15 on padding.

    Built in (at least) fp32: -9e15 overflows fp16, and fp16 scores are promoted.
    """
    dtype = torch.promote_types(scores_dtype, torch.float32)
    return text_mask.to(dtype).masked_fill(text_mask == 0, _PAD_TOKEN_BIAS)


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention computed once and used in both directions.

    The visual queries and text keys give one score matrix ``S`` (B*heads, N, L). Its softmax
    over text tokens attends vision to text; the softmax of ``S^T`` over visual locations
    attends text to vision (microsoft/GLIP maskrcnn_benchmark/utils/fuse_helper.py,
    BiMultiHeadAttention.forward).

    Two product orders give the same result. "direct" is the official one: project all N
    visual tokens to the 2048-wide attention space three times (queries, text-side values, the
    output projection's input). "reassociated" moves the 2048-wide products to the text side,
    which has few tokens; per head h, with V^ the visual input and K_h the keys:

    * scores: ``S_h = V^ (s W_q,h^T K_h^T) + s b_q,h K_h^T`` (s = head_dim^-0.5);
    * visual update: ``sum_h A_v,h (V_l,h W_out,h^T) + b_out``, where ``V_l,h`` are the text
      values and ``W_out,h`` the out_v_proj columns of head h (one product, heads stacked along
      the token axis);
    * text update before out_l_proj: ``(A_l,h V^) W_vv,h^T + (A_l,h 1) b_vv,h``, with the
      actual row sums of A_l,h (dropout makes them differ from 1 in training).

    Per product, direct costs N E (C + L) multiply-adds and reassociated N C heads L + L C E
    (N visual tokens of width C, L text tokens, attention width E); "auto" takes the cheaper
    one per call. Both orders clamp and normalise the same score matrix; the reassociated
    order keeps it in its (B, N, heads, L) layout, which the products read without copies,
    and draws the dropout masks the direct order would draw.
    """

    def __init__(
        self,
        v_dim,
        l_dim,
        embed_dim,
        num_heads,
        dropout=0.1,
        clamp_value=50000.0,
        impl="auto",
    ):
        """
        Args:
            v_dim (int): visual channel count (the head width).
            l_dim (int): text hidden size.
            embed_dim (int): attention width (2048 in the official model), split in heads.
            num_heads (int): number of heads; must divide ``embed_dim``.
            dropout (float): dropout on both attention maps, training only.
            clamp_value (float): attention logits are clamped to +-clamp_value (0 disables).
            impl (str): product order, "auto", "reassociated" or "direct" (see above).
        """
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"fusion embed_dim={embed_dim} is not divisible by num_heads={num_heads}"
            )
        if impl not in FUSION_IMPLS:
            raise ValueError(
                f"fusion impl must be one of {FUSION_IMPLS} (MODEL.GLIP.FUSION_IMPL), got {impl!r}"
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.embed_dim = embed_dim
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp_value = clamp_value
        self.impl = impl

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

    def reassociates(self, num_v, num_l):
        """Whether ``num_v`` visual and ``num_l`` text tokens take the reassociated order."""
        if self.impl != "auto":
            return self.impl == "reassociated"
        v_dim, heads, embed = self.v_proj.in_features, self.num_heads, self.embed_dim
        direct = num_v * embed * (v_dim + num_l)
        reassociated = num_v * v_dim * heads * num_l + num_l * v_dim * embed
        return reassociated < direct

    def _attention_maps(self, scores, text_mask, batch, dtype):
        """Both attention maps of the direct order from its (B*heads, N, L) scores, after dropout.

        ``dtype`` (the text values' dtype) is the one the image->text map is cast to after its
        softmax, which may run in fp32 (the padding bias is fp32).

        Returns:
            (Tensor, Tensor): image->text ``attn_v`` (B*heads, N, L) and text->image
            ``attn_l`` (B*heads, L, N).
        """
        num_v, num_l = scores.shape[1:]
        scores = clamp_abs(scores, self.clamp_value)

        # Text -> image: every text token (padding included) queries all locations; the row max
        # is subtracted explicitly, as in the official code, before the second clamp.
        scores_l = scores.transpose(1, 2)
        scores_l = clamp_abs(scores_l - scores_l.max(dim=-1, keepdim=True)[0], self.clamp_value)
        attn_l = scores_l.softmax(dim=-1)

        # Image -> text: padded tokens get -9e15, valid ones +1 (the official long mask).
        if text_mask is not None:
            scores = (
                scores.view(batch, self.num_heads, num_v, num_l)
                + _text_bias(text_mask, scores.dtype)[:, None, None, :]
            ).view(batch * self.num_heads, num_v, num_l)
        attn_v = scores.softmax(dim=-1).to(dtype)

        attn_v = F.dropout(attn_v, p=self.dropout, training=self.training)
        attn_l = F.dropout(attn_l, p=self.dropout, training=self.training)
        return attn_v, attn_l

    def forward(self, v, l, text_mask=None):
        """
        Args:
            v (Tensor): (B, N, v_dim) normalised visual tokens of all levels.
            l (Tensor): (B, L, l_dim) normalised text tokens.
            text_mask (Tensor or None): (B, L), 1 for valid tokens, 0 for padding.
        Returns:
            (Tensor, Tensor): visual update (B, N, v_dim) and text update (B, L, l_dim).
        """
        if self.reassociates(v.shape[1], l.shape[1]):
            return self._forward_reassociated(v, l, text_mask)
        return self._forward_direct(v, l, text_mask)

    def _forward_direct(self, v, l, text_mask):
        batch = v.shape[0]
        query = self._split_heads(self.v_proj(v) * self.scale)
        key = self._split_heads(self.l_proj(l))
        value_v = self._split_heads(self.values_v_proj(v))
        value_l = self._split_heads(self.values_l_proj(l))

        scores = torch.bmm(query, key.transpose(1, 2))
        attn_v, attn_l = self._attention_maps(scores, text_mask, batch, value_l.dtype)
        out_v = self.out_v_proj(self._merge_heads(torch.bmm(attn_v, value_l), batch))
        out_l = self.out_l_proj(self._merge_heads(torch.bmm(attn_l, value_v), batch))
        return out_v, out_l

    def _forward_reassociated(self, v, l, text_mask):
        batch, num_v, v_dim = v.shape
        num_l = l.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        key = self.l_proj(l).view(batch, num_l, heads, head_dim).transpose(1, 2)  # (B,h,L,d)
        value_l = self.values_l_proj(l).view(batch, num_l, heads, head_dim).transpose(1, 2)

        # Scores: the query projection folded into the keys; one product gives all heads side
        # by side, (B, N, h*L). The maps below stay in that layout, so that the products with
        # the attention maps need no copies.
        w_q = self.v_proj.weight.view(heads, head_dim, v_dim)
        b_q = self.v_proj.bias.view(heads, 1, head_dim)
        key_q = torch.matmul(key, w_q) * self.scale  # (B, h, L, C) = s K_h W_q,h
        key_b = torch.matmul(key, b_q.transpose(1, 2)) * self.scale  # (B, h, L, 1)
        scores = torch.baddbmm(
            key_b.reshape(batch, 1, heads * num_l),
            v,
            key_q.reshape(batch, heads * num_l, v_dim).transpose(1, 2),
        ).view(batch, num_v, heads, num_l)
        attn_v, attn_l = self._attention_maps_by_location(scores, text_mask, value_l.dtype)

        # Visual update: the text values through out_v_proj per head, (B, h*L, C), times the
        # image->text maps of all heads, (B, N, h*L).
        w_out = self.out_v_proj.weight.view(v_dim, heads, head_dim).transpose(0, 1)  # (h,C,d)
        value_out = torch.matmul(value_l, w_out.transpose(1, 2))  # (B, h, L, C)
        out_v = torch.baddbmm(
            self.out_v_proj.bias.to(value_out.dtype).expand(batch, 1, v_dim),
            attn_v.reshape(batch, num_v, heads * num_l).to(value_out.dtype),
            value_out.reshape(batch, heads * num_l, v_dim),
        )

        # Text update: attention-weighted visual tokens per head, (B, h*L, C), through the
        # value projection of that head; its bias enters with the attention row sums. Both
        # factors in the values' dtype (what autocast would pick).
        dtype = value_l.dtype
        attn_l = attn_l.reshape(batch, num_v, heads * num_l).to(dtype)
        pooled = torch.bmm(attn_l.transpose(1, 2), v.to(dtype)).view(batch, heads, num_l, v_dim)
        w_vv = self.values_v_proj.weight.view(heads, head_dim, v_dim)
        b_vv = self.values_v_proj.bias.view(heads, 1, head_dim)
        value_v = torch.matmul(pooled, w_vv.transpose(1, 2))  # (B, h, L, d)
        row_sums = attn_l.sum(dim=1).view(batch, heads, num_l, 1)
        value_v = value_v + row_sums * b_vv
        out_l = self.out_l_proj(value_v.transpose(1, 2).reshape(batch, num_l, self.embed_dim))
        return out_v, out_l

    def _attention_maps_by_location(self, scores, text_mask, dtype):
        """The direct order's attention maps, computed on (B, N, heads, L) scores.

        Same operations as ``_attention_maps`` (the text->image max and softmax run over dim 1
        here), and the same dropout masks: each is drawn in the memory order the direct order
        gives it, (B, heads, N, L) and (B, heads, L, N), then laid over this layout.

        Returns:
            (Tensor, Tensor): image->text and text->image maps, both (B, N, heads, L).
        """
        scores = clamp_abs(scores, self.clamp_value)
        attn_l = clamp_abs(scores - scores.max(dim=1, keepdim=True)[0], self.clamp_value)
        attn_l = attn_l.softmax(dim=1)
        if text_mask is not None:
            scores = scores + _text_bias(text_mask, scores.dtype)[:, None, None, :]
        attn_v = scores.softmax(dim=-1).to(dtype)
        if self.training and self.dropout > 0:
            attn_v = attn_v * self._dropout_noise(attn_v, (0, 2, 1, 3))
            attn_l = attn_l * self._dropout_noise(attn_l, (0, 2, 3, 1))
        return attn_v, attn_l

    def _dropout_noise(self, attn, order):
        """``F.dropout``'s scaled keep mask for ``attn`` as if drawn on ``attn.permute(order)``
        made contiguous (the direct order's layout), returned in ``attn``'s layout."""
        shape = [attn.shape[d] for d in order]
        if self.dropout >= 1:  # F.dropout's special case: everything dropped
            return attn.new_zeros(())
        noise = torch.empty(shape, dtype=attn.dtype, device=attn.device)
        noise.bernoulli_(1 - self.dropout).div_(1 - self.dropout)
        inverse = [order.index(d) for d in range(attn.dim())]
        return noise.permute(inverse)


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
        impl="auto",
    ):
        """
        Args:
            v_dim, l_dim, embed_dim, num_heads, dropout, clamp_value, impl: see
                BiMultiHeadAttention.
            init_layer_scale (float): initial value of gamma_v / gamma_l (1 / number of layers).
        """
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(
            v_dim, l_dim, embed_dim, num_heads, dropout, clamp_value, impl
        )
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
