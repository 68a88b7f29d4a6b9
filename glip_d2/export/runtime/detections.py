"""Detections from the graph's outputs: glip_d2's ``GLIPPostProcessor``
(glip_d2/modeling/postprocess.py) and its class-aware "+1" NMS, in numpy."""

import numpy as np

__all__ = ["detections", "nms_legacy"]


def _sigmoid(x):
    with np.errstate(over="ignore"):  # exp(50000) = inf gives 0, as it should
        return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def nms_legacy(boxes, scores, labels, iou_threshold):
    """Class-aware NMS with "+1" IoU; kept indices by decreasing score. As glip_d2 runs
    torchvision's ``batched_nms`` on (x1, y1, x2 + 1, y2 + 1): up to 1000 boxes, classes are
    kept apart by offsetting each label's boxes (its float32 rounding included), beyond that
    class by class."""
    boxes = boxes.astype(np.float32).copy()
    boxes[:, 2:] += np.float32(1)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if boxes.size <= 4000:
        offsets = labels.astype(np.float32) * (boxes.max() + np.float32(1))
        return _nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = np.zeros(len(boxes), bool)
    for label in np.unique(labels):
        index = np.nonzero(labels == label)[0]
        keep[index[_nms(boxes[index], scores[index], iou_threshold)]] = True
    kept = np.nonzero(keep)[0]
    return kept[np.argsort(-scores[kept], kind="stable")]


def _nms(boxes, scores, threshold):
    """Greedy NMS of torchvision's CPU kernel (float32 IoU, suppress IoU > threshold)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for n, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[n + 1 :]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou.astype(np.float64) > threshold]] = True  # float vs double, as in C
    return np.asarray(keep, np.int64)


def detections(
    outputs,
    positive_map,
    image_size,
    *,
    score_threshold,
    pre_nms_top_n,
    nms_threshold,
    detections_per_prompt,
):
    """glip_d2's ``GLIPPostProcessor`` on one prompt's graph outputs.

    Args:
        outputs (dict): the graph's outputs (batch 1).
        positive_map (ndarray): (P, L) binary phrase-token map.
        image_size (tuple): the resized image's unpadded (h, w).
    Returns:
        (boxes (K, 4), scores (K,), phrase index (K,) int64) in resized-image pixels.
    """
    binary = (positive_map > 0).astype(np.float32)
    counts = binary.sum(axis=1)
    h, w = image_size
    ends = np.cumsum(outputs["level_sizes"])
    all_boxes, all_scores, all_labels = [], [], []
    for start, end in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True):
        probs = _sigmoid(outputs["logits"][0, start:end])
        scores = (probs @ binary.T) / counts  # (HW, P) mean token probability
        candidate = scores > score_threshold
        n = min(int(candidate.sum()), pre_nms_top_n)
        ranked = (scores * _sigmoid(outputs["centerness"][0, start:end])[:, None])[candidate]
        top = np.argsort(-ranked, kind="stable")[:n]  # ties at the cut: the earlier candidate
        loc, phrase = (v[top] for v in np.nonzero(candidate))
        boxes = outputs["boxes"][0, start:end][loc].copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h - 1)
        all_boxes.append(boxes)
        all_scores.append(np.sqrt(ranked[top]))
        all_labels.append(phrase.astype(np.int64))
    boxes, scores, labels = (np.concatenate(v) for v in (all_boxes, all_scores, all_labels))
    keep = nms_legacy(boxes, scores, labels, nms_threshold)
    cap = detections_per_prompt
    if cap > 0 and len(keep) > cap:
        kept = scores[keep]
        keep = keep[kept >= np.partition(kept, len(kept) - cap)[len(kept) - cap]]
    return boxes[keep], scores[keep], labels[keep]
