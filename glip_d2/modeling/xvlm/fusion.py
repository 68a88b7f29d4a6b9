"""Image-text fusion for ITM and MLM (docs/XVLM.md, "Fusion").

X-VLM's cross-modal encoder reads the vision encoder's output together with the text. In GLIP
the pyramid P3..P7 is the vision encoder's output, and two head layouts exist:

* deep fusion (``MODEL.GLIP.EARLY_FUSE``): the head's own tower is the cross-modal encoder;
  :func:`run_head_tower` runs it on (image, text) pairs and its final visual and text features
  are the fused ones (no new parameters);
* GLIP-T (A) (no early fusion, the main job's layout): the tower never sees the text, so
  :class:`CrossAttentionFusion` adds a small BERT-style cross encoder in which the text tokens
  attend to the pyramid's locations.

Either way ITM reads the pooled fused visual features and the mean fused text token
(:class:`MatchHead`), and MLM the fused text tokens.
"""

import torch
from torch import nn

from ..head import flatten_levels

__all__ = ["run_head_tower", "CrossAttentionFusion", "MatchHead"]


def run_head_tower(head, features, text):
    """The head's fused tower (fusion, BERT layer, DyConv per layer) on (image, text) pairs.

    Args:
        head (VLDyHead): a head with deep fusion (its layers have ``fusion``).
        features (list[Tensor]): per level (P, C, H_l, W_l), one image per pair.
        text (TextFeatures): (P, L, D), one text per pair.
    Returns:
        (list[Tensor], Tensor): the final visual features per level and the final text
        features (P, L, D).
    """
    hidden = text.hidden
    for layer in head.tower:
        features, hidden = layer(features, hidden, text.mask)
    return features, hidden


class _CrossLayer(nn.Module):
    """A BERT layer with cross-attention (post-LN, as X-VLM's cross encoder layers):
    self-attention over the text, attention from the text to the visual tokens, feed-forward."""

    def __init__(self, width, heads, intermediate, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(width, intermediate), nn.GELU(), nn.Linear(intermediate, width)
        )
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in range(3)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, text_pad, visual, visual_pad):
        x = self.norms[0](x + self.dropout(self.self_attn(x, x, x, key_padding_mask=text_pad)[0]))
        attended = self.cross_attn(x, visual, visual, key_padding_mask=visual_pad)[0]
        x = self.norms[1](x + self.dropout(attended))
        return self.norms[2](x + self.dropout(self.ffn(x)))


class CrossAttentionFusion(nn.Module):
    """Text tokens attend to the pyramid's locations (for heads without deep fusion).

    Visual tokens are the locations of the levels with stride >= ``min_stride`` (P4..P7 by
    default: 340 tokens for a 256x256 image; P3 would add 1024 more, and at GLIP-T's 800x1333
    over 20 000), padding masked out, projected to the text width, plus a learned embedding of
    their level and a linear embedding of their centre in image-relative coordinates (captions
    say "left of"). They are computed once per image and shared by the image's pairs.
    """

    def __init__(self, visual_channels, text_config, strides, min_stride=16, num_layers=1):
        """
        Args:
            visual_channels (int): the pyramid's width.
            text_config: the text encoder's transformers config (hidden_size,
                num_attention_heads, intermediate_size, hidden_dropout_prob).
            strides (list[int]): the pyramid's strides, level order.
            min_stride (int): the finest level read.
            num_layers (int): cross layers.
        """
        super().__init__()
        self.levels = [i for i, s in enumerate(strides) if s >= min_stride]
        if not self.levels:
            raise ValueError(
                f"MODEL.GLIP.XVLM.FUSION_MIN_STRIDE={min_stride} leaves none of the pyramid's "
                f"levels (strides {list(strides)})"
            )
        self.strides = [strides[i] for i in self.levels]
        width = text_config.hidden_size
        self.visual_proj = nn.Linear(visual_channels, width)
        self.level_embed = nn.Parameter(torch.zeros(len(self.levels), width))
        nn.init.normal_(self.level_embed, std=0.02)
        self.position_proj = nn.Linear(2, width)
        self.layers = nn.ModuleList(
            [
                _CrossLayer(
                    width,
                    text_config.num_attention_heads,
                    text_config.intermediate_size,
                    text_config.hidden_dropout_prob,
                )
                for _ in range(num_layers)
            ]
        )

    def visual_tokens(self, features, masks, image_sizes):
        """(B, N, D) visual tokens and (B, N) bool padding of each image."""
        features = [features[i] for i in self.levels]
        sizes = torch.tensor(image_sizes, dtype=torch.float32, device=features[0].device)
        wh = sizes.flip(1)[:, None, None, :]  # (B, 1, 1, 2): (w, h)
        tokens = []
        for k, (f, stride) in enumerate(zip(features, self.strides, strict=True)):
            ys = (torch.arange(f.shape[2], device=f.device) + 0.5) * stride
            xs = (torch.arange(f.shape[3], device=f.device) + 0.5) * stride
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) x, y
            rel = grid[None] / wh  # (B, H, W, 2) centres relative to the image
            embed = self.position_proj(rel) + self.level_embed[k]
            tokens.append(embed.permute(0, 3, 1, 2))  # (B, D, H, W)
        visual = self.visual_proj(flatten_levels(features)) + flatten_levels(tokens)
        pad = ~torch.cat([masks[i].flatten(1) for i in self.levels], dim=1)
        return visual, pad

    def forward(self, features, masks, image_sizes, rows, text):
        """
        Args:
            features (list[Tensor]): per level (B, C, H_l, W_l), all P3..P7.
            masks (list[Tensor]): per level (B, H_l, W_l) bool, True inside the image.
            image_sizes (list[(h, w)]): per image its size before padding.
            rows (LongTensor): (P,) the image of each pair.
            text (TextFeatures): (P, L, D) the text of each pair.
        Returns:
            Tensor: (P, L, D) fused text features.
        """
        visual, visual_pad = self.visual_tokens(features, masks, image_sizes)
        visual, visual_pad = visual.index_select(0, rows), visual_pad.index_select(0, rows)
        x, text_pad = text.hidden, text.mask == 0
        for layer in self.layers:
            x = layer(x, text_pad, visual.to(x.dtype), visual_pad)
        return x


class MatchHead(nn.Module):
    """ITM logit of a pair from [pooled fused visual features, mean fused text token]: X-VLM's
    MLP (Linear to twice the width, LayerNorm, GELU, Linear), one logit (match vs not)."""

    def __init__(self, visual_channels, text_width):
        super().__init__()
        width = visual_channels + text_width
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(), nn.Linear(2 * width, 1)
        )

    def forward(self, visual, text):
        """(P, C) and (P, D) -> (P,) logits."""
        return self.mlp(torch.cat([visual, text.to(visual.dtype)], dim=1)).squeeze(1)
