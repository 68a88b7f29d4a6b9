"""Pooled features for the X-VLM objectives: the whole image and each box from the pyramid
P3..P7, a text from its token features.

* Image: the mean over the levels of each level's mean over the image's own locations (padding
  excluded), so every scale counts the same whatever its number of locations.
* Box: RoIAlign (Detectron2's ``ROIPooler`` "ROIAlignV2", i.e. ``torchvision.ops.roi_align``
  with ``aligned=True``) on the level FPN's rule picks for its size (Lin et al. 2017, Eq. 1:
  level ``floor(4 + log2(sqrt(area) / 224))``, clamped to the pyramid), averaged over the bins.
* Text: the mean over the attended tokens ([CLS], word pieces, [SEP]); see docs/XVLM.md for why
  not [CLS].
"""

import math

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn

__all__ = ["valid_location_masks", "pool_pyramid", "BoxPooler", "mean_over_tokens"]


def valid_location_masks(features, image_sizes, strides):
    """Per level a (B, H_l, W_l) bool mask of the locations inside each image (not padding).

    Args:
        features (list[Tensor]): per level (B, C, H_l, W_l).
        image_sizes (list[(h, w)]): each image's size before padding.
        strides (list[int]): each level's stride.
    """
    masks = []
    for f, stride in zip(features, strides, strict=True):
        mask = torch.zeros(f.shape[0], f.shape[2], f.shape[3], dtype=torch.bool, device=f.device)
        for i, (h, w) in enumerate(image_sizes):
            mask[i, : math.ceil(h / stride), : math.ceil(w / stride)] = True
        masks.append(mask)
    return masks


def pool_pyramid(features, masks):
    """(B, C): the mean over levels of each level's mean over the ``masks`` locations."""
    pooled = []
    for f, m in zip(features, masks, strict=True):
        m = m.unsqueeze(1).to(f.dtype)
        pooled.append((f * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1.0))
    return torch.stack(pooled).mean(dim=0)


def mean_over_tokens(hidden, mask):
    """(B, D): the mean of ``hidden`` (B, L, D) over the tokens where ``mask`` (B, L) is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class BoxPooler(nn.Module):
    """Boxes -> (G, C) mean RoIAlign features from the FPN level of each box's size."""

    def __init__(self, strides, output_size=7):
        """
        Args:
            strides (list[int]): the pyramid's strides in level order (8, ..., 128 for P3..P7).
            output_size (int): RoIAlign bins per side.
        """
        super().__init__()
        self.pooler = ROIPooler(
            output_size,
            scales=[1.0 / s for s in strides],
            sampling_ratio=0,  # adaptive: ceil(roi size / bins) samples per bin
            pooler_type="ROIAlignV2",
            canonical_box_size=224,
            canonical_level=4,
        )

    def forward(self, features, boxes):
        """
        Args:
            features (list[Tensor]): per level (B, C, H_l, W_l).
            boxes (list[Tensor]): per image (G_i, 4) legacy inclusive xyxy boxes
                (``x2 = x + w - 1``, docs/DESIGN.md) in padded-image pixels.
        Returns:
            Tensor: (sum G_i, C) in image order.
        """
        # The legacy box covers pixels x1..x2 inclusive: its continuous extent ends at x2 + 1.
        continuous = [Boxes(b.float() + b.new_tensor([0.0, 0.0, 1.0, 1.0])) for b in boxes]
        pooled = self.pooler([f.float() for f in features], continuous)
        return pooled.mean(dim=(2, 3))
