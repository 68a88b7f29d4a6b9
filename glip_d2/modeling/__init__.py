"""glip_d2 models: backbones, language backbones, the fused head and the detector.

Importing this package registers glip_d2's modules on Detectron2's registries.
"""

from . import backbone, meta_arch  # noqa: F401  (registration)
from .anchors import GLIPAnchorGenerator
from .box_coder import BoxCoder
from .head import GLIP_HEAD_REGISTRY, VLDyHead, build_glip_head
from .language_backbone import LANGUAGE_BACKBONE_REGISTRY, build_language_backbone
from .prompt_cache import TextFeatureCache

__all__ = [
    "LANGUAGE_BACKBONE_REGISTRY",
    "build_language_backbone",
    "BoxCoder",
    "GLIPAnchorGenerator",
    "GLIP_HEAD_REGISTRY",
    "VLDyHead",
    "build_glip_head",
    "TextFeatureCache",
]
