"""Visual backbones: Swin v1 and GLIP's FPN (registered on ``BACKBONE_REGISTRY``)."""

from .fpn import (
    GLIPFPN,
    DropBlock2D,
    build_glip_resnet_fpn_backbone,
    build_glip_swin_fpn_backbone,
)
from .swin import GLIPSwinTransformer, build_glip_swin_backbone

__all__ = [
    "DropBlock2D",
    "GLIPFPN",
    "GLIPSwinTransformer",
    "build_glip_resnet_fpn_backbone",
    "build_glip_swin_backbone",
    "build_glip_swin_fpn_backbone",
]
