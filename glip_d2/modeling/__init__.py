"""glip_d2 models: backbones, language backbones, the fused head and the detector.

Importing this package registers glip_d2's modules on Detectron2's registries.
"""

from .box_coder import BoxCoder, GLIPAnchorGenerator
from .head import GLIP_HEAD_REGISTRY, VLDyHead, build_glip_head

__all__ = ["BoxCoder", "GLIPAnchorGenerator", "GLIP_HEAD_REGISTRY", "VLDyHead", "build_glip_head"]
