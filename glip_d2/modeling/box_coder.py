"""GLIP's box coder: ATSS regression deltas with the legacy "+1" widths.

Official counterpart: microsoft/GLIP maskrcnn_benchmark/modeling/box_coder.py, ``BoxCoder``
(weights (10, 10, 5, 5) for ATSS). The box convention is described in
``glip_d2/structures/legacy_boxes.py``.
"""

import math

import torch

from ..structures import boxes_from_centers_and_sizes, centers_and_sizes

__all__ = ["BoxCoder"]

# Official bound on dw/dh before exp (maskrcnn-benchmark's bbox_xform_clip).
_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """ATSS box coder with the legacy "+1" widths.

    Encode ``dx = wx (gx - ax) / aw``, ``dw = ww log(gw / aw)`` with centres ``(x1 + x2) / 2``
    and widths ``x2 - x1 + 1``; decode inverts it with ``dw / ww`` clamped at
    ``log(1000 / 16)``.
    """

    def __init__(self, weights=(10.0, 10.0, 5.0, 5.0), scale_clamp=_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

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
        gx, gy, gw, gh = centers_and_sizes(gt_boxes)
        ax, ay, aw, ah = centers_and_sizes(anchors)
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
        ax, ay, aw, ah = centers_and_sizes(anchors)
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3] / wh).clamp(max=self.scale_clamp)
        px, py = dx * aw + ax, dy * ah + ay
        pw, ph = torch.exp(dw) * aw, torch.exp(dh) * ah
        return boxes_from_centers_and_sizes(px, py, pw, ph)
