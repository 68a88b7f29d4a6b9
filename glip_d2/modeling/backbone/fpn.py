"""GLIP's FPN (official "SWINT-FPN-RETINANET"): C3..C5 -> P3..P7.

Official counterpart: microsoft/GLIP maskrcnn_benchmark/modeling/backbone/fpn.py, ``FPN`` and
``LastLevelP6P7``.

Module names follow the official checkpoint (``fpn_inner2..4``, ``fpn_layer2..4``,
``top_blocks.p6/p7``) so that converting a checkpoint is a prefix rename. Detectron2's own
FPN names its convs ``fpn_lateral{stage}`` / ``fpn_output{stage}``, hence a separate class.
"""

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from .swin import build_glip_swin_backbone

__all__ = [
    "DropBlock2D",
    "GLIPFPN",
    "build_glip_swin_fpn_backbone",
    "build_glip_resnet_fpn_backbone",
]


class DropBlock2D(nn.Module):
    """DropBlock (training only): zero ``block_size``-square regions shared across channels.

    Seeds are drawn per sample and site with probability ``drop_prob / block_size**2``,
    grown to squares by a stride-1 max-pool, and the kept activations are rescaled by
    ``mask.numel() / mask.sum()`` (the official dropblock package's rule).
    """

    def __init__(self, drop_prob, block_size):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"DropBlock2D: drop_prob must be in [0, 1], got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"DropBlock2D: block_size must be >= 1, got {block_size}")
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)

    def forward(self, x):
        """x: (B, C, H, W) -> same shape."""
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        seeds = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(seeds, self.block_size, stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            # An even kernel with padding k//2 yields one extra row and column.
            dropped = dropped[:, :, :-1, :-1]
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class GLIPFPN(Backbone):
    """FPN over three bottom-up maps (strides 8, 16, 32) with P6/P7 from P5.

    ``forward(images)`` maps (B, 3, H, W) to ``{"p3": (B, C, H/8, W/8), ..., "p7": (B, C,
    H/128, W/128)}`` (ceil sizes), ``C = out_channels``. Top-down merging upsamples with
    nearest interpolation to the lateral's exact size. In training, DropBlock acts on the
    merged C4 and C3 maps before their output convs (not on the C5 level).
    """

    def __init__(
        self,
        *,
        bottom_up,
        in_features,
        out_channels,
        drop_block=True,
        drop_prob=0.3,
        drop_size=3,
        size_divisibility=32,
    ):
        """
        Args:
            bottom_up (Backbone): yields ``in_features``, ordered from stride 8 to 32.
            in_features (list[str]): the three bottom-up features feeding P3, P4, P5.
            drop_block (bool): apply DropBlock in training (official MODEL.FPN.DROP_BLOCK).
            size_divisibility (int): the padding multiple images need (32, as officially).
        """
        super().__init__()
        if len(in_features) != 3:
            raise ValueError(f"GLIPFPN needs 3 input features (C3, C4, C5), got {in_features}")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"bottom-up backbone does not output {missing}; it outputs {list(shapes)}"
            )
        strides = [shapes[f].stride for f in in_features]
        if strides != [8, 16, 32]:
            raise ValueError(
                f"GLIPFPN inputs {in_features} must have strides 8/16/32, got {strides}"
            )
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        # The official FPN is built from [0, C3, C4, C5]; the zero entry is skipped, so its
        # modules are numbered 2..4.
        for idx, name in zip((2, 3, 4), in_features, strict=True):
            inner = nn.Conv2d(shapes[name].channels, out_channels, 1)
            layer = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            weight_init.c2_xavier_fill(inner)
            weight_init.c2_xavier_fill(layer)
            self.add_module(f"fpn_inner{idx}", inner)
            self.add_module(f"fpn_layer{idx}", layer)
        # P6 from P5 (the FPN output) and P7 from ReLU(P6); c2_xavier_fill is the official
        # kaiming_uniform(a=1) init.
        self.top_blocks = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
        self.drop_block = DropBlock2D(drop_prob, drop_size) if drop_block else None

        self._out_features = ["p3", "p4", "p5", "p6", "p7"]
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._out_feature_strides = {f"p{k}": 2**k for k in range(3, 8)}
        self._size_divisibility = size_divisibility

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward(self, x):
        """
        Args:
            x: (B, 3, H, W) normalized, padded images.
        Returns:
            dict[str, Tensor]: ``p3..p7`` in that order.
        """
        bottom = self.bottom_up(x)
        c3, c4, c5 = (bottom[f] for f in self.in_features)
        merged = self.fpn_inner4(c5)
        results = [self.fpn_layer4(merged)]
        for feature, idx in ((c4, 3), (c3, 2)):
            lateral = getattr(self, f"fpn_inner{idx}")(feature)
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            if self.drop_block is not None:
                merged = self.drop_block(merged)
            results.insert(0, getattr(self, f"fpn_layer{idx}")(merged))
        results.extend(self.top_blocks(results[-1]))
        return dict(zip(self._out_features, results, strict=True))


def _fpn_from_config(cfg, bottom_up, in_features):
    return GLIPFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        drop_block=cfg.MODEL.FPN.DROP_BLOCK,
        drop_prob=cfg.MODEL.FPN.DROP_PROB,
        drop_size=cfg.MODEL.FPN.DROP_SIZE,
        size_divisibility=cfg.MODEL.GLIP.SIZE_DIVISIBILITY,
    )


@BACKBONE_REGISTRY.register()
def build_glip_swin_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Swin (``cfg.MODEL.SWIN``) + GLIP FPN, the official GLIP-T/L visual backbone."""
    bottom_up = build_glip_swin_backbone(cfg, input_shape)
    return _fpn_from_config(cfg, bottom_up, list(cfg.MODEL.SWIN.OUT_FEATURES))


@BACKBONE_REGISTRY.register()
def build_glip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2 ResNet (``cfg.MODEL.RESNETS``, ``MODEL.BACKBONE.FREEZE_AT``) + GLIP FPN.

    The FPN always reads res3..res5, whatever ``MODEL.RESNETS.OUT_FEATURES`` says.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return _fpn_from_config(cfg, bottom_up, ["res3", "res4", "res5"])
