"""Legacy "+1" anchors and box coding of GLIP's ATSS head (spec §4.6, §12.6).

Boxes are (x1, y1, x2, y2) with inclusive pixel extents: a box's width is ``x2 - x1 + 1``.
This is the maskrcnn-benchmark convention the official model was trained with; anchors, the
box coder, IoU (ATSS and NMS) and clipping all use it.
"""

import math

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
)

__all__ = [
    "GLIPAnchorGenerator",
    "legacy_cell_anchors",
    "BoxCoder",
    "pairwise_iou_legacy",
    "box_area_legacy",
    "clip_boxes_legacy",
]

# Official bound on dw/dh before exp (maskrcnn-benchmark's bbox_xform_clip).
_SCALE_CLAMP = math.log(1000.0 / 16)


def legacy_cell_anchors(stride, sizes=(64,), aspect_ratios=(1.0,)):
    """Cell anchors of the Detectron/maskrcnn-benchmark generator for one level.

    The reference box is ``[0, 0, stride-1, stride-1]`` (centre ``(stride-1)/2``); for each
    aspect ratio (h/w) its width and height are rounded to integers, then scaled to each size.

    Returns:
        Tensor: (len(aspect_ratios) * len(sizes), 4) float64, ratio-major.
    """
    ctr = 0.5 * (stride - 1)
    out = []
    for ratio in aspect_ratios:
        w = np.round(np.sqrt(stride * stride / ratio))
        h = np.round(w * ratio)
        for size in sizes:
            ws, hs = w * size / stride, h * size / stride
            out.append(
                [
                    ctr - 0.5 * (ws - 1),
                    ctr - 0.5 * (hs - 1),
                    ctr + 0.5 * (ws - 1),
                    ctr + 0.5 * (hs - 1),
                ]
            )
    return torch.tensor(out, dtype=torch.float64)


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


def box_area_legacy(boxes):
    """(N, 4) -> (N,) areas with inclusive extents."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def pairwise_iou_legacy(boxes1, boxes2):
    """IoU matrix (N, M) of (N, 4) and (M, 4) boxes with the "+1" convention (ATSS, NMS)."""
    area1, area2 = box_area_legacy(boxes1), box_area_legacy(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def clip_boxes_legacy(boxes, height, width):
    """Clip (N, 4) boxes to ``[0, width-1] x [0, height-1]`` (returns a new tensor)."""
    x = boxes[:, 0::2].clamp(min=0, max=width - 1)
    y = boxes[:, 1::2].clamp(min=0, max=height - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


class BoxCoder:
    """ATSS box coder with the legacy "+1" widths (spec §4.6).

    Encode ``dx = wx (gx - ax) / aw``, ``dw = ww log(gw / aw)`` with centres ``(x1 + x2) / 2``
    and widths ``x2 - x1 + 1``; decode inverts it with ``dw / ww`` clamped at
    ``log(1000 / 16)``.
    """

    def __init__(self, weights=(10.0, 10.0, 5.0, 5.0), scale_clamp=_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    @staticmethod
    def _centers_sizes(boxes):
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        return (boxes[:, 2] + boxes[:, 0]) / 2, (boxes[:, 3] + boxes[:, 1]) / 2, w, h

    def encode(self, gt_boxes, anchors):
        """
        Args:
            gt_boxes (Tensor): (N, 4) target boxes.
            anchors (Tensor): (N, 4) anchors, paired row by row.
        Returns:
            Tensor: (N, 4) deltas (dx, dy, dw, dh).
        """
        if gt_boxes.shape != anchors.shape:
            raise ValueError(
                f"BoxCoder.encode: gt_boxes {tuple(gt_boxes.shape)} and anchors "
                f"{tuple(anchors.shape)} must both be (N, 4)"
            )
        wx, wy, ww, wh = self.weights
        gx, gy, gw, gh = self._centers_sizes(gt_boxes)
        ax, ay, aw, ah = self._centers_sizes(anchors)
        return torch.stack(
            [
                wx * (gx - ax) / aw,
                wy * (gy - ay) / ah,
                ww * torch.log(gw / aw),
                wh * torch.log(gh / ah),
            ],
            dim=1,
        )

    def decode(self, deltas, anchors):
        """
        Args:
            deltas (Tensor): (N, 4) predicted deltas.
            anchors (Tensor): (N, 4) anchors.
        Returns:
            Tensor: (N, 4) boxes in the deltas' dtype.
        """
        if deltas.shape != anchors.shape:
            raise ValueError(
                f"BoxCoder.decode: deltas {tuple(deltas.shape)} and anchors {tuple(anchors.shape)} "
                "must both be (N, 4)"
            )
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centers_sizes(anchors)
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3] / wh).clamp(max=self.scale_clamp)
        px, py = dx * aw + ax, dy * ah + ay
        pw, ph = torch.exp(dw) * aw, torch.exp(dh) * ah
        return torch.stack(
            [px - 0.5 * (pw - 1), py - 0.5 * (ph - 1), px + 0.5 * (pw - 1), py + 0.5 * (ph - 1)],
            dim=1,
        )
