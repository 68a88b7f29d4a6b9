"""Post-processing (glip_d2/modeling/postprocess.py) on the official head outputs of image 0."""

import pytest
import torch
from conftest import load_reference
from detection_sets import assert_same_detections

from glip_d2.modeling.box_coder import BoxCoder
from glip_d2.modeling.head import flatten_levels
from glip_d2.modeling.postprocess import GLIPPostProcessor, phrase_scores
from glip_d2.structures import nms_legacy


def _post(**kw):
    args = dict(
        score_threshold=0.0106, pre_nms_top_n=1000, nms_threshold=0.6, detections_per_image=100
    )
    args.update(kw)
    return GLIPPostProcessor(box_coder=BoxCoder(), **args)


def _image0(reference_dir):
    """The official head outputs of image 0 in the head's (N, .) layout, and its phrase map."""
    inputs = load_reference(reference_dir, "inputs")
    ev = load_reference(reference_dir, "outputs_eval")[0]
    pmap = (inputs["positive_maps_normalized"][0] > 0).float()
    dense = (
        torch.cat(ev["head_dot_product_logits"]),
        flatten_levels([x[None] for x in ev["head_bbox_reg"]])[0],
        flatten_levels([x[None] for x in ev["head_centerness"]])[0],
        torch.cat(ev["anchors_xyxy"]),
        [len(a) for a in ev["anchors_xyxy"]],
    )
    return ev, pmap, dense


def test_reference_candidates_and_detections(reference_dir):
    ev, pmap, dense = _image0(reference_dir)
    post = _post()
    boxes, scores, labels = post.candidates(*dense, pmap, (224, 273))
    assert boxes.shape == (182, 4)
    assert_same_detections(
        boxes,
        scores,
        labels + 1,
        ev["pre_nms_boxes_xyxy"],
        ev["pre_nms_scores"],
        ev["pre_nms_labels"],
    )
    keep = post.select(boxes, scores, labels)
    assert keep.numel() == 58
    assert_same_detections(
        boxes[keep],
        scores[keep],
        labels[keep] + 1,
        ev["det_boxes_resized_xyxy"],
        ev["det_scores"],
        ev["det_labels"],
    )

    # The batched entry point gives the same Instances.
    logits, bbox_reg, centerness, anchors, sizes = dense
    head = {"logits": logits[None], "bbox_reg": bbox_reg[None], "centerness": centerness[None]}
    (inst,) = post(head, anchors, sizes, [pmap], [(224, 273)])
    assert inst.image_size == (224, 273) and len(inst) == 58
    assert_same_detections(
        inst.pred_boxes.tensor,
        inst.scores,
        inst.pred_classes + 1,
        ev["det_boxes_resized_xyxy"],
        ev["det_scores"],
        ev["det_labels"],
    )
    assert inst.pred_boxes.tensor[:, 2].max() <= 272 and inst.pred_boxes.tensor[:, 3].max() <= 223


def test_cap_keeps_kth_value_ties(reference_dir):
    _, pmap, dense = _image0(reference_dir)
    post = _post(detections_per_image=10)
    boxes, scores, labels = post.candidates(*dense, pmap, (224, 273))
    keep = post.select(boxes, scores, labels)
    nms_kept = nms_legacy(boxes, scores, labels, 0.6)
    tenth = scores[nms_kept].sort(descending=True).values[9]
    assert keep.numel() == int((scores[nms_kept] >= tenth).sum()) >= 10


def test_phrase_scores_mean_of_probabilities():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.9], [0.5, 0.5, 0.0, 0.0]])
    pmap = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    out = phrase_scores(probs, pmap)
    assert torch.allclose(out, torch.tensor([[0.25, 0.5], [0.25, 0.25]]))
    with pytest.raises(ValueError, match="cover no token"):
        phrase_scores(probs, torch.zeros(1, 4))


def test_nms_legacy_plus_one_iou():
    # Widths 10 (x2 - x1 + 1); the second box overlaps 7 px: IoU +1 = 70/130 = 0.538, while
    # the plain IoU of torchvision would be 54/108 = 0.5.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [3.0, 0.0, 12.0, 9.0]])
    scores = torch.tensor([0.9, 0.8])
    same = torch.tensor([0, 0])
    assert nms_legacy(boxes, scores, same, 0.52).tolist() == [0]
    assert nms_legacy(boxes, scores, same, 0.54).tolist() == [0, 1]
    # Boxes of different phrases never suppress each other.
    assert nms_legacy(boxes, scores, torch.tensor([0, 1]), 0.1).tolist() == [0, 1]
