"""ATSS assignment (glip_d2/modeling/atss.py) against hand-made cases and the official run."""

import pytest
import torch
from conftest import load_reference

from glip_d2.modeling.anchors import GLIPAnchorGenerator
from glip_d2.modeling.atss import ATSSMatcher


def _anchors(height, width):
    """Anchors of a padded (height, width) image: P3..P7 concatenated, and level sizes."""
    gen = GLIPAnchorGenerator(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[[1.0]],
        strides=[8, 16, 32, 64, 128],
    )
    sizes = []
    h, w = height // 8, width // 8
    for _ in range(5):
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    levels = gen.grid_anchors(sizes)
    return torch.cat(levels), [len(a) for a in levels]


def test_reference_assignment(reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    train = load_reference(reference_dir, "outputs_train")
    anchors, per_level = _anchors(224, 352)
    assert per_level == [1232, 308, 77, 24, 6]
    matcher = ATSSMatcher(topk=9)
    for i in range(2):
        matched = matcher(anchors, per_level, inputs["train_gt_boxes_resized_xyxy"][i])
        assert torch.equal(matched, train["atss_matched_box_index"][i].long())
        per_box = torch.bincount(matched[matched >= 0], minlength=3).tolist()
        assert per_box == [[18, 9, 9], [13, 9, 9]][i]


def test_single_box_on_one_level():
    # One 64x64 box centred on a P3 anchor centre of a 64x64 image: P3 has 8x8 anchors.
    anchors, per_level = _anchors(64, 64)
    box = torch.tensor([[-4.0, -4.0, 59.0, 59.0]])
    matched = ATSSMatcher(topk=9)(anchors, per_level, box)
    pos = torch.nonzero(matched >= 0).flatten()
    # The anchor at grid (3, 3) coincides with the box (IoU 1) and its four edge neighbours
    # overlap 56*64 / (2*64*64 - 56*64) = 7/9; the diagonal ones (0.60) and the coarser levels'
    # candidates fall below mean + std.
    assert pos.tolist() == [19, 26, 27, 28, 35]


def test_highest_iou_wins_and_empty_gt():
    anchors, per_level = _anchors(64, 64)
    big = torch.tensor([[0.0, 0.0, 63.0, 63.0]])
    small = torch.tensor([[20.0, 20.0, 43.0, 43.0]])
    m = ATSSMatcher(topk=9)
    both = m(anchors, per_level, torch.cat([big, small]))
    only_big = m(anchors, per_level, big)
    only_small = m(anchors, per_level, small)
    # Every anchor positive for both boxes goes to the box it overlaps more.
    from glip_d2.structures import pairwise_iou_legacy

    iou = pairwise_iou_legacy(anchors, torch.cat([big, small]))
    shared = (only_big >= 0) & (only_small >= 0)
    assert shared.any()
    assert torch.equal(both[shared], iou[shared].argmax(1))
    empty = m(anchors, per_level, torch.zeros((0, 4)))
    assert empty.shape == (anchors.shape[0],) and (empty == -1).all()


def test_bad_level_sizes():
    anchors, per_level = _anchors(64, 64)
    with pytest.raises(ValueError, match="does not sum"):
        ATSSMatcher()(anchors, per_level[:-1], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
