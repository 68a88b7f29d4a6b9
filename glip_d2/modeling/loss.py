"""GLIP's training losses (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py,
``ATSSLossComputation``; docs/OFFICIAL_BEHAVIOURS.md, "[NoObj] target column" and "Loss
normalisation").

* ``loss_dot_product_token``: sigmoid focal loss between every anchor and every attended token.
  A positive anchor's token targets are the binary positive-map row of its matched box; a
  background anchor's target is a one-hot at column MAX_QUERY_LEN - 1 ([NoObj]): the last
  column of the official text, padded to MAX_QUERY_LEN, so usually a masked pad. With unpadded
  text (L < MAX_QUERY_LEN) that column does not exist and the target is dropped, exactly as the
  official mask drops it; only when L == MAX_QUERY_LEN does it land on a real token.
* ``loss_reg``: GIoU between the decoded prediction and the decoded target of each positive
  anchor, weighted by its centerness target, times ``reg_loss_weight``.
* ``loss_centerness``: BCE between the centerness logit and the centerness target.

The focal and centerness sums are divided by the number of positives averaged over workers
(floored at 1), the GIoU sum by the centerness-target sum averaged over workers. Everything
runs in fp32, also under autocast.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from .atss import ATSSMatcher
from .box_coder import BoxCoder

__all__ = [
    "GLIPLoss",
    "token_sigmoid_focal_loss",
    "giou_loss",
    "centerness_targets",
]


def token_sigmoid_focal_loss(logits, targets, text_mask, alpha=0.25, gamma=2.0):
    """Summed binary focal loss over the attended token columns.

    Args:
        logits (Tensor): (B, N, L).
        targets (Tensor): (B, N, L) 0/1.
        text_mask (Tensor): (B, L), nonzero for attended tokens.
    Returns:
        Tensor: scalar sum.
    """
    keep = (text_mask > 0)[:, None, :].expand_as(logits)
    logits, targets = logits[keep], targets[keep]
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def giou_loss(pred_boxes, target_boxes, weight=None):
    """Summed ``1 - GIoU`` of paired boxes (official GIoULoss: areas without ``+1``).

    Args:
        pred_boxes, target_boxes (Tensor): (P, 4) xyxy.
        weight (Tensor or None): (P,) per-pair weights, used when their sum is positive.
    Returns:
        Tensor: scalar.
    """
    px1, py1, tx1, ty1 = pred_boxes[:, 0], pred_boxes[:, 1], target_boxes[:, 0], target_boxes[:, 1]
    # A predicted box with x2 < x1 is treated as degenerate, not as a flipped box.
    px2 = torch.max(px1, pred_boxes[:, 2])
    py2 = torch.max(py1, pred_boxes[:, 3])
    tx2, ty2 = target_boxes[:, 2], target_boxes[:, 3]
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    iw = torch.min(px2, tx2) - torch.max(px1, tx1)
    ih = torch.min(py2, ty2) - torch.max(py1, ty1)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (
        torch.max(py2, ty2) - torch.min(py1, ty1)
    ) + 1e-7
    union = pred_area + target_area - inter + 1e-7
    giou = inter / union - (enclosing - union) / enclosing
    losses = 1 - giou
    if weight is not None and weight.sum() > 0:
        return (losses * weight).sum()
    return losses.sum()


def centerness_targets(gt_boxes, anchors):
    """``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of anchor centres inside (P, 4) boxes."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1)
    return torch.sqrt((lr.amin(dim=1) / lr.amax(dim=1)) * (tb.amin(dim=1) / tb.amax(dim=1)))


def _mean_over_workers(value):
    """All-reduce a float scalar tensor and divide by the world size (no-op on one worker)."""
    world = comm.get_world_size()
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / world
    return value


class GLIPLoss(nn.Module):
    """ATSS assignment and GLIP's three loss terms for a batch of images."""

    @configurable
    def __init__(
        self,
        *,
        box_coder,
        atss_topk=9,
        focal_alpha=0.25,
        focal_gamma=2.0,
        token_loss_weight=1.0,
        reg_loss_weight=2.0,
        max_query_len=None,
    ):
        """
        Args:
            box_coder (BoxCoder): encodes/decodes regression targets.
            atss_topk (int): ATSS candidates per level and box.
            focal_alpha, focal_gamma (float): token focal-loss parameters.
            token_loss_weight (float): weight of ``loss_dot_product_token``.
            reg_loss_weight (float): weight of ``loss_reg`` (official ATSS.REG_LOSS_WEIGHT).
            max_query_len (int or None): MAX_QUERY_LEN; the [NoObj] target sits at column
                ``max_query_len - 1`` and only when the text has that many columns. None: at
                the last column of whatever length the text has (text padded to the maximum).
        """
        super().__init__()
        self.box_coder = box_coder
        self.matcher = ATSSMatcher(atss_topk)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.token_loss_weight = token_loss_weight
        self.reg_loss_weight = reg_loss_weight
        self.max_query_len = max_query_len

    @classmethod
    def from_config(cls, cfg, box_coder=None):
        g = cfg.MODEL.GLIP
        return {
            "box_coder": box_coder if box_coder is not None else BoxCoder(g.BBOX_REG_WEIGHTS),
            "atss_topk": g.ATSS_TOPK,
            "focal_alpha": g.FOCAL_ALPHA,
            "focal_gamma": g.FOCAL_GAMMA,
            "token_loss_weight": g.TOKEN_LOSS_WEIGHT,
            "reg_loss_weight": g.REG_LOSS_WEIGHT,
            "max_query_len": cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN,
        }

    def match(self, anchors, num_anchors_per_level, gt_boxes):
        """ATSS per image.

        Args:
            anchors (Tensor): (N, 4) anchors of all levels.
            num_anchors_per_level (list[int]): level sizes.
            gt_boxes (list[Tensor]): per image (G_i, 4).
        Returns:
            list[Tensor]: per image (N,) int64 matched box index, -1 for background.
        """
        return [self.matcher(anchors, num_anchors_per_level, g) for g in gt_boxes]

    def forward(
        self, head_outputs, anchors, num_anchors_per_level, gt_boxes, gt_token_maps, text_mask
    ):
        """
        Args:
            head_outputs (dict): ``logits`` (B, N, L), ``bbox_reg`` (B, N, 4), ``centerness``
                (B, N, 1), N locations in level order (the head's layout).
            anchors (Tensor): (N, 4) anchors shared by the padded batch, P3..P7.
            num_anchors_per_level (list[int]): level sizes.
            gt_boxes (list[Tensor]): per image (G_i, 4) boxes in the legacy convention.
            gt_token_maps (list[Tensor]): per image (G_i, L) binary token targets of each box.
            text_mask (Tensor): (B, L) attention mask of the prompts; L <= ``max_query_len``.
        Returns:
            dict[str, Tensor]: ``loss_dot_product_token``, ``loss_reg``, ``loss_centerness``.
        """
        logits, bbox_reg = head_outputs["logits"], head_outputs["bbox_reg"]
        ctr_logits = head_outputs["centerness"].squeeze(2)
        num_images, num_anchors, num_tokens = logits.shape
        if len(gt_boxes) != num_images or len(gt_token_maps) != num_images:
            raise ValueError(
                f"GLIPLoss: {num_images} images but {len(gt_boxes)} box lists and "
                f"{len(gt_token_maps)} token-map lists"
            )
        if anchors.shape[0] != num_anchors:
            raise ValueError(f"GLIPLoss: {anchors.shape[0]} anchors for {num_anchors} locations")
        if self.max_query_len is not None and num_tokens > self.max_query_len:
            raise ValueError(
                f"GLIPLoss: {num_tokens} token columns > MAX_QUERY_LEN={self.max_query_len}"
            )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._losses(
                logits.float(),
                bbox_reg.float(),
                ctr_logits.float(),
                anchors.float(),
                num_anchors_per_level,
                [g.float() for g in gt_boxes],
                gt_token_maps,
                text_mask,
            )

    def _losses(
        self, logits, bbox_reg, ctr_logits, anchors, num_per_level, gt_boxes, maps, text_mask
    ):
        num_tokens = logits.shape[2]
        matched = self.match(anchors, num_per_level, gt_boxes)
        # [NoObj]: official column MAX_QUERY_LEN - 1 of the padded text; a shorter (unpadded)
        # text has no such column, and there the official target sits on a masked pad.
        noobj = num_tokens - 1 if self.max_query_len is None else self.max_query_len - 1

        token_targets = torch.zeros_like(logits)
        pos_reg, pos_ctr, pos_anchors, pos_gt = [], [], [], []
        for i, m in enumerate(matched):
            pos = torch.nonzero(m >= 0).squeeze(1)
            if maps[i].shape != (gt_boxes[i].shape[0], num_tokens):
                raise ValueError(
                    f"GLIPLoss: image {i} token map {tuple(maps[i].shape)} != "
                    f"({gt_boxes[i].shape[0]}, {num_tokens})"
                )
            token_targets[i, pos] = maps[i].to(logits)[m[pos]]
            if noobj < num_tokens:
                token_targets[i, m < 0, noobj] = 1.0  # [NoObj]
            pos_reg.append(bbox_reg[i, pos])
            pos_ctr.append(ctr_logits[i, pos])
            pos_anchors.append(anchors[pos])
            pos_gt.append(gt_boxes[i][m[pos]])
        pos_reg, pos_ctr = torch.cat(pos_reg), torch.cat(pos_ctr)
        pos_anchors, pos_gt = torch.cat(pos_anchors), torch.cat(pos_gt)

        num_pos = _mean_over_workers(logits.new_tensor(float(pos_reg.shape[0])))
        num_pos = num_pos.clamp(min=1.0)
        token_loss = token_sigmoid_focal_loss(
            logits, token_targets, text_mask, self.focal_alpha, self.focal_gamma
        )
        losses = {"loss_dot_product_token": token_loss / num_pos * self.token_loss_weight}

        if pos_reg.shape[0] > 0:
            # Targets go through encode/decode as in the official loss (the round trip is not
            # exactly the identity in fp32).
            target_boxes = self.box_coder.decode(
                self.box_coder.encode(pos_gt, pos_anchors), pos_anchors
            )
            ctr_t = centerness_targets(target_boxes, pos_anchors)
            ctr_sum = _mean_over_workers(ctr_t.sum())
            pred_boxes = self.box_coder.decode(pos_reg, pos_anchors)
            reg = giou_loss(pred_boxes, target_boxes, ctr_t) / ctr_sum
            ctr = F.binary_cross_entropy_with_logits(pos_ctr, ctr_t, reduction="sum") / num_pos
        else:
            # Keep every head output in the graph so that DDP sees the parameters used.
            _mean_over_workers(logits.new_zeros(()))
            reg = bbox_reg.sum() * 0
            ctr = ctr_logits.sum() * 0
        losses["loss_reg"] = reg * self.reg_loss_weight
        losses["loss_centerness"] = ctr
        return losses
