"""Compare detections as sets (the official output order is implementation-defined)."""

import torch


def assert_same_detections(
    boxes, scores, labels, ref_boxes, ref_scores, ref_labels, box_tol=1e-3, score_tol=1e-6
):
    """Match every detection to an unused reference one with the same label, box and score."""
    assert boxes.shape[0] == ref_boxes.shape[0], (boxes.shape[0], ref_boxes.shape[0])
    used = torch.zeros(ref_boxes.shape[0], dtype=torch.bool)
    for b, s, lab in zip(boxes, scores, labels, strict=True):
        ok = (
            (ref_labels == lab)
            & ((ref_boxes - b).abs().amax(dim=1) <= box_tol)
            & ((ref_scores - s).abs() <= score_tol)
            & ~used
        )
        idx = torch.nonzero(ok).flatten()
        assert idx.numel() > 0, (
            f"no reference detection for label {int(lab)} box {b.tolist()} score {float(s)}"
        )
        used[idx[0]] = True
    assert used.all()


def assert_same_instances(a, b, box_tol=1e-3, score_tol=1e-5):
    """Two ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``) as detection sets."""
    assert_same_detections(
        a.pred_boxes.tensor,
        a.scores,
        a.pred_classes,
        b.pred_boxes.tensor,
        b.scores,
        b.pred_classes,
        box_tol=box_tol,
        score_tol=score_tol,
    )
