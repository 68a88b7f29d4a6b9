"""From token logits to detections (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/inference.py,
``ATSSPostProcessor``; docs/OFFICIAL_BEHAVIOURS.md, "Scoring and NMS").

Per image and level: a phrase's score is the mean of its tokens' probabilities; (location,
phrase) pairs above ``score_threshold`` (before centerness) are candidates; at most
``pre_nms_top_n`` of them, ranked by score x centerness, are decoded, scored
``sqrt(score x centerness)`` and clipped to the unpadded image. Then, over all levels,
class-aware NMS with the legacy "+1" IoU, and at most ``detections_per_image`` detections
(every score at or above the k-th largest is kept, so ties can keep more).
"""

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances

from ..structures import clip_boxes_legacy, nms_legacy
from .box_coder import BoxCoder

__all__ = ["GLIPPostProcessor", "phrase_scores", "rescale_instances"]


def phrase_scores(token_probs, positive_map):
    """Mean token probability of each phrase.

    Args:
        token_probs (Tensor): (..., L) token probabilities.
        positive_map (Tensor): (P, L) binary map of each phrase's tokens.
    Returns:
        Tensor: (..., P).
    """
    binary = (positive_map > 0).to(token_probs.dtype)
    counts = binary.sum(dim=1)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"phrases {empty} of the positive map cover no token")
    return torch.matmul(token_probs, binary.t()) / counts


class GLIPPostProcessor:
    """Turns the head's outputs into per-image ``Instances`` (resized-image coordinates)."""

    @configurable
    def __init__(
        self,
        *,
        box_coder,
        score_threshold=0.05,
        pre_nms_top_n=1000,
        nms_threshold=0.6,
        detections_per_image=100,
    ):
        """
        Args:
            box_coder (BoxCoder): decodes box deltas against anchors.
            score_threshold (float): on the phrase score, before centerness.
            pre_nms_top_n (int): candidates kept per level and image.
            nms_threshold (float): class-aware NMS IoU threshold.
            detections_per_image (int): cap after NMS (<= 0: no cap), per prompt pass
                (``MODEL.GLIP.DETECTIONS_PER_CHUNK``, else ``TEST.DETECTIONS_PER_IMAGE``).
        """
        self.box_coder = box_coder
        self.score_threshold = score_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image

    @classmethod
    def from_config(cls, cfg, box_coder=None):
        g = cfg.MODEL.GLIP
        return {
            "box_coder": box_coder if box_coder is not None else BoxCoder(g.BBOX_REG_WEIGHTS),
            "score_threshold": g.INFERENCE_TH,
            "pre_nms_top_n": g.PRE_NMS_TOP_N,
            "nms_threshold": g.NMS_TH,
            # Applied to each prompt pass: one per image, or one per chunk of a long vocabulary.
            "detections_per_image": g.DETECTIONS_PER_CHUNK or cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def candidates(
        self, logits, bbox_reg, centerness, anchors, num_anchors_per_level, positive_map, image_size
    ):
        """Pre-NMS candidates of one image, all levels.

        Args:
            logits (Tensor): (N, L) token logits, N locations in level order.
            bbox_reg (Tensor): (N, 4) deltas.
            centerness (Tensor): (N, 1) logits.
            anchors (Tensor): (N, 4).
            num_anchors_per_level (list[int]): level sizes (the top-k runs per level).
            positive_map (Tensor): (P, L) binary phrase-token map.
            image_size (tuple[int, int]): unpadded (h, w).
        Returns:
            tuple: boxes (K, 4), scores (K,), phrase indices (K,) int64, concatenated P3..P7.
        """
        all_boxes, all_scores, all_labels = [], [], []
        positive_map = positive_map.float()
        levels = [
            t.split(list(num_anchors_per_level)) for t in (logits, bbox_reg, centerness, anchors)
        ]
        for logit, reg, ctr, anc in zip(*levels, strict=True):
            # Scores, thresholds and decoding in fp32 also when the head ran under autocast.
            logit, reg, ctr, anc = logit.float(), reg.float(), ctr.float(), anc.float()
            scores = phrase_scores(logit.sigmoid(), positive_map)  # (HW, P)
            candidate = scores > self.score_threshold
            n = min(int(candidate.sum()), self.pre_nms_top_n)
            ctr_prob = ctr.reshape(-1).sigmoid()
            ranked = (scores * ctr_prob[:, None])[candidate]
            # Unsorted top-k over the candidates in (location, phrase) order, as official.
            ranked, top = ranked.topk(n, sorted=False)
            loc_phrase = torch.nonzero(candidate)[top]
            loc, phrase = loc_phrase[:, 0], loc_phrase[:, 1]
            boxes = self.box_coder.decode(reg[loc], anc[loc])
            all_boxes.append(clip_boxes_legacy(boxes, image_size[0], image_size[1]))
            all_scores.append(ranked.sqrt())
            all_labels.append(phrase)
        return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)

    def select(self, boxes, scores, labels):
        """Class-aware NMS, then the per-image cap. Returns kept indices."""
        keep = nms_legacy(boxes, scores, labels, self.nms_threshold)
        cap = self.detections_per_image
        if cap > 0 and keep.numel() > cap:
            kept_scores = scores[keep]
            kth = torch.kthvalue(kept_scores, keep.numel() - cap + 1).values
            keep = keep[kept_scores >= kth]
        return keep

    def __call__(self, head_outputs, anchors, num_anchors_per_level, positive_maps, image_sizes):
        """
        Args:
            head_outputs (dict): ``logits`` (B, N, L), ``bbox_reg`` (B, N, 4), ``centerness``
                (B, N, 1), N locations in level order (the head's layout).
            anchors (Tensor): (N, 4), shared by the batch.
            num_anchors_per_level (list[int]): level sizes.
            positive_maps (list[Tensor]): per image (P_i, L) binary map of its phrases.
            image_sizes (list[tuple[int, int]]): per image unpadded (h, w).
        Returns:
            list[Instances]: ``pred_boxes``, ``scores``, ``pred_classes`` (phrase index).
        """
        results = []
        for i, (pmap, size) in enumerate(zip(positive_maps, image_sizes, strict=True)):
            boxes, scores, labels = self.candidates(
                head_outputs["logits"][i],
                head_outputs["bbox_reg"][i],
                head_outputs["centerness"][i],
                anchors,
                num_anchors_per_level,
                pmap,
                size,
            )
            keep = self.select(boxes, scores, labels)
            inst = Instances(tuple(size))
            inst.pred_boxes = Boxes(boxes[keep])
            inst.scores = scores[keep]
            inst.pred_classes = labels[keep]
            results.append(inst)
        return results


def rescale_instances(instances, height, width):
    """Scale boxes from the resized image to (height, width), x and y separately.

    As the official box-list resize (microsoft/GLIP maskrcnn_benchmark/structures/
    bounding_box.py, ``BoxList.resize``): no clipping and no removal of empty boxes.
    """
    h, w = instances.image_size
    scale = torch.tensor(
        [width / w, height / h, width / w, height / h],
        dtype=instances.pred_boxes.tensor.dtype,
        device=instances.pred_boxes.tensor.device,
    )
    out = Instances((int(height), int(width)))
    out.pred_boxes = Boxes(instances.pred_boxes.tensor * scale)
    out.scores = instances.scores
    out.pred_classes = instances.pred_classes
    return out
