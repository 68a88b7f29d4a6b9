"""ATSS anchor assignment (adaptive training sample selection; microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/loss.py, ``ATSSLossComputation.prepare_targets``).

For every ground-truth box the ``topk`` anchors of each level whose centres are closest to the
box centre become candidates; a candidate is positive when its IoU reaches the mean plus the
unbiased standard deviation of the box's candidate IoUs and its centre lies strictly inside the
box. An anchor positive for several boxes goes to the one it overlaps most.
"""

import torch

from ..structures import pairwise_iou_legacy

__all__ = ["ATSSMatcher"]


class ATSSMatcher:
    """Assigns each anchor of one image to at most one ground-truth box.

    Ties matter for parity: anchor and box centres sit on half-pixel grids, so several anchors
    can be exactly as far from a box centre as the ``topk``-th one. Selecting with
    ``torch.topk(largest=False)`` over fp32 Euclidean distances reproduces the official choice.
    """

    def __init__(self, topk=9, center_margin=0.01):
        """
        Args:
            topk (int): candidates per level and box (official ``ATSS.TOPK`` x anchors per
                location, which is 1 for GLIP).
            center_margin (float): an anchor centre must be farther than this from every side
                of the box.
        """
        if topk < 1:
            raise ValueError(f"ATSS topk must be >= 1, got {topk}")
        self.topk = topk
        self.center_margin = center_margin

    def __call__(self, anchors, num_anchors_per_level, gt_boxes):
        """
        Args:
            anchors (Tensor): (N, 4) xyxy anchors of all levels, concatenated P3..P7.
            num_anchors_per_level (list[int]): anchors of each level; sums to N.
            gt_boxes (Tensor): (G, 4) xyxy ground-truth boxes (legacy inclusive convention).
        Returns:
            Tensor: (N,) int64, the matched box index in [0, G) or -1 for background.
        """
        num_anchors = anchors.shape[0]
        if sum(num_anchors_per_level) != num_anchors:
            raise ValueError(
                f"num_anchors_per_level {list(num_anchors_per_level)} does not sum to the "
                f"{num_anchors} anchors given"
            )
        num_gt = gt_boxes.shape[0]
        if num_gt == 0:
            return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
        anchors = anchors.float()
        gt_boxes = gt_boxes.float()

        ious = pairwise_iou_legacy(anchors, gt_boxes)  # (N, G)
        anchor_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2.0
        gt_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
        distances = (anchor_ctr[:, None, :] - gt_ctr[None, :, :]).pow(2).sum(-1).sqrt()

        candidates = []
        start = 0
        for n in num_anchors_per_level:
            k = min(self.topk, n)
            if k > 0:
                _, idx = distances[start : start + n].topk(k, dim=0, largest=False)
                candidates.append(idx + start)
            start += n
        candidates = torch.cat(candidates, dim=0)  # (K, G) anchor indices

        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(0) + candidate_ious.std(0)
        is_pos = candidate_ious >= threshold[None, :]

        cx = anchor_ctr[candidates, 0]
        cy = anchor_ctr[candidates, 1]
        margins = torch.stack(
            [
                cx - gt_boxes[None, :, 0],
                cy - gt_boxes[None, :, 1],
                gt_boxes[None, :, 2] - cx,
                gt_boxes[None, :, 3] - cy,
            ],
            dim=0,
        )
        is_pos &= margins.amin(dim=0) > self.center_margin

        gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
        pos_anchor, pos_gt = candidates[is_pos], gt_index[is_pos]
        ious_pos = torch.full_like(ious, float("-inf"))
        ious_pos[pos_anchor, pos_gt] = ious[pos_anchor, pos_gt]
        best_iou, matched = ious_pos.max(dim=1)
        matched[best_iou == float("-inf")] = -1
        return matched
