"""The legacy "+1" box geometry GLIP was trained with (maskrcnn-benchmark's convention).

Boxes are (x1, y1, x2, y2) with *inclusive* pixel extents: a box covering pixels 0..9 is
``[0, 0, 9, 9]`` and its width is ``x2 - x1 + 1 = 10``. The official model uses this
convention for its anchors (centre of the first cell ``(stride - 1) / 2``), its box coder,
the IoU of ATSS and NMS, clipping to ``[0, W-1]``, the horizontal flip ``x' = W - x - 1`` and
the COCO export ``w = x2 - x1 + 1`` (microsoft/GLIP maskrcnn_benchmark/structures/
bounding_box.py, ``BoxList.convert``, ``clip_to_image`` and ``transpose``; structures/
boxlist_ops.py, ``boxlist_iou``; modeling/box_coder.py, ``BoxCoder``). Every glip_d2 module
that needs one of these rules imports it from here. Functions taking ``boxes`` accept (..., 4)
torch tensors and, where noted, numpy arrays.
"""

import numpy as np
import torch
from torchvision.ops import batched_nms

__all__ = [
    "xywh_to_legacy_xyxy",
    "legacy_xyxy_to_xywh",
    "centers_and_sizes",
    "boxes_from_centers_and_sizes",
    "legacy_cell_anchors",
    "box_area_legacy",
    "pairwise_iou_legacy",
    "clip_boxes_legacy",
    "nonempty_legacy",
    "flip_boxes_legacy",
    "nms_legacy",
]


def xywh_to_legacy_xyxy(xywh):
    """COCO ``[x, y, w, h]`` (pixel counts) -> inclusive ``[x, y, x + w - 1, y + h - 1]``.

    Accepts torch tensors and numpy arrays (..., 4); returns a new one of the same kind.
    """
    out = xywh + 0
    out[..., 2:] = xywh[..., :2] + xywh[..., 2:] - 1
    return out


def legacy_xyxy_to_xywh(boxes):
    """Inclusive ``[x1, y1, x2, y2]`` -> ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` (the official
    COCO export). Accepts torch tensors and numpy arrays (..., 4)."""
    out = boxes + 0
    out[..., 2:] = boxes[..., 2:] - boxes[..., :2] + 1
    return out


def centers_and_sizes(boxes):
    """(N, 4) boxes -> centres ``(x1 + x2) / 2``, ``(y1 + y2) / 2`` and sizes ``x2 - x1 + 1``,
    ``y2 - y1 + 1``, each (N,)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return (boxes[:, 2] + boxes[:, 0]) / 2, (boxes[:, 3] + boxes[:, 1]) / 2, w, h


def boxes_from_centers_and_sizes(cx, cy, w, h):
    """The inverse of :func:`centers_and_sizes`: (N,) tensors -> (N, 4) boxes
    ``[cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2]``."""
    return torch.stack(
        [cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)], dim=1
    )


def legacy_cell_anchors(stride, sizes=(64,), aspect_ratios=(1.0,)):
    """Cell anchors of the Detectron / maskrcnn-benchmark generator for one level.

    The reference box is ``[0, 0, stride-1, stride-1]`` (centre ``(stride-1)/2``); for each
    aspect ratio (h/w) its width and height are rounded to integers, then scaled to each size
    (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/anchor_generator.py,
    ``generate_anchors``). With GLIP's one size S and ratio 1 this is the square
    ``[c - (S-1)/2, c - (S-1)/2, c + (S-1)/2, c + (S-1)/2]``, ``[-28, -28, 35, 35]`` for P3.

    Returns:
        Tensor: (len(aspect_ratios) * len(sizes), 4) float64, ratio-major.
    """
    ws, hs = [], []
    for ratio in aspect_ratios:
        w = np.round(np.sqrt(stride * stride / ratio))
        h = np.round(w * ratio)
        for size in sizes:
            ws.append(w * size / stride)
            hs.append(h * size / stride)
    w, h = torch.tensor(ws, dtype=torch.float64), torch.tensor(hs, dtype=torch.float64)
    center = torch.full_like(w, 0.5 * (stride - 1))
    return boxes_from_centers_and_sizes(center, center, w, h)


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
    """Clip (N, 4) boxes to ``[0, width-1] x [0, height-1]`` (returns a new tensor / array)."""
    out = boxes + 0
    out[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    out[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    return out


def nonempty_legacy(boxes):
    """(N,) bool: the (N, 4) boxes with ``x2 > x1`` and ``y2 > y1``, those the official data
    path keeps after clipping (``BoxList.clip_to_image(remove_empty=True)``). Torch or numpy."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def flip_boxes_legacy(boxes, width):
    """Horizontal flip of (N, 4) boxes in an image ``width`` pixels wide: ``x' = W - x - 1``
    (x1 and x2 swap roles). Accepts torch tensors and numpy arrays."""
    out = boxes + 0
    out[:, 0] = width - boxes[:, 2] - 1
    out[:, 2] = width - boxes[:, 0] - 1
    return out


def nms_legacy(boxes, scores, labels, iou_threshold):
    """Class-aware NMS with inclusive-pixel IoU (``+1`` widths); IoU > threshold suppresses.

    torchvision computes IoU without the ``+1``; shifting x2/y2 by one pixel gives it the
    legacy widths, intersections and areas.

    Returns:
        Tensor: kept indices, by decreasing score.
    """
    shifted = boxes.clone()
    shifted[:, 2:] += 1
    return batched_nms(shifted, scores, labels, iou_threshold)
