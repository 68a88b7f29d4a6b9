"""GLIP's anchors: one square legacy "+1" anchor per location and level.

Official counterpart: microsoft/GLIP maskrcnn_benchmark/modeling/rpn/anchor_generator.py,
``AnchorGenerator`` (built by ``make_anchor_generator_complex`` for the ATSS / VLDyHead RPN).
The box convention is described in ``glip_d2/structures/legacy_boxes.py``.
"""

from detectron2.config import configurable
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
)

from ..structures import legacy_cell_anchors

__all__ = ["GLIPAnchorGenerator"]


@ANCHOR_GENERATOR_REGISTRY.register()
class GLIPAnchorGenerator(DefaultAnchorGenerator):
    """D2 anchor generator with the legacy cell anchors and no grid offset.

    With GLIP's settings (one size, ratio 1) each level has one square anchor per location;
    P3's first anchor is [-28, -28, 35, 35] and the location (i, j) shifts it by
    ``(j*s, i*s, j*s, i*s)``, row-major. Cell anchors are non-persistent buffers (they are not
    in checkpoints; the official ``cell_anchors`` entries are dropped on conversion).
    """

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides):
        """
        Args:
            sizes (list[list[float]] or list[float]): anchor sizes per level.
            aspect_ratios (list[list[float]] or list[float]): h/w ratios per level.
            strides (list[int]): stride of each level.
        """
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios, strides=strides, offset=0.0)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        sizes, strides = list(cfg.MODEL.GLIP.ANCHOR_SIZES), list(cfg.MODEL.GLIP.ANCHOR_STRIDES)
        if len(sizes) != len(strides):
            raise ValueError(
                f"MODEL.GLIP.ANCHOR_SIZES {sizes} and MODEL.GLIP.ANCHOR_STRIDES {strides} "
                "differ in length"
            )
        if input_shape is not None:
            shape_strides = [s.stride for s in input_shape]
            if shape_strides != strides:
                raise ValueError(
                    f"feature strides {shape_strides} != MODEL.GLIP.ANCHOR_STRIDES {strides}"
                )
        return {"sizes": [[s] for s in sizes], "aspect_ratios": [[1.0]], "strides": strides}

    def _calculate_anchors(self, sizes, aspect_ratios):
        # The legacy cell anchors depend on the stride, which D2's hook does not receive.
        return BufferList(
            [
                legacy_cell_anchors(stride, s, a).float()
                for stride, s, a in zip(self.strides, sizes, aspect_ratios, strict=True)
            ]
        )

    def grid_anchors(self, grid_sizes):
        """
        Args:
            grid_sizes (list[tuple[int, int]]): (H_l, W_l) per level.
        Returns:
            list[Tensor]: per level (H_l * W_l * A, 4) anchors, on the buffers' device.
        """
        if len(grid_sizes) != self.num_features:
            raise ValueError(
                f"GLIPAnchorGenerator has {self.num_features} levels, got {len(grid_sizes)} sizes"
            )
        return self._grid_anchors([list(s) for s in grid_sizes])
