"""Legacy "+1" anchors, box coder and IoU helpers."""

import math

import pytest
import torch
from conftest import load_reference, reference_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator

from glip_d2.modeling.anchors import GLIPAnchorGenerator
from glip_d2.modeling.box_coder import BoxCoder
from glip_d2.structures import (
    box_area_legacy,
    clip_boxes_legacy,
    legacy_cell_anchors,
    pairwise_iou_legacy,
)

STRIDES = [8, 16, 32, 64, 128]


def test_cell_anchors_and_no_state():
    gen = GLIPAnchorGenerator(reference_cfg())
    cells = [c.tolist() for c in gen.cell_anchors]
    assert cells == [
        [[-28.0, -28.0, 35.0, 35.0]],
        [[-56.0, -56.0, 71.0, 71.0]],
        [[-112.0, -112.0, 143.0, 143.0]],
        [[-224.0, -224.0, 287.0, 287.0]],
        [[-448.0, -448.0, 575.0, 575.0]],
    ]
    assert dict(gen.state_dict()) == {}
    assert gen.num_anchors == [1] * 5


def test_legacy_cell_anchor_with_aspect_ratio():
    # The classic Faster R-CNN anchor of stride 16, size 128, ratio 0.5 (rounded 23 x 12 base).
    assert legacy_cell_anchors(16, (128,), (0.5,)).tolist() == [[-84.0, -40.0, 99.0, 55.0]]


def test_grid_anchors_row_major():
    gen = GLIPAnchorGenerator(reference_cfg())
    p3 = gen.grid_anchors([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])[0]
    assert p3.tolist() == [
        [-28.0, -28.0, 35.0, 35.0],
        [-20.0, -28.0, 43.0, 35.0],
        [-12.0, -28.0, 51.0, 35.0],
        [-28.0, -20.0, 35.0, 43.0],
        [-20.0, -20.0, 43.0, 43.0],
        [-12.0, -20.0, 51.0, 43.0],
    ]
    with pytest.raises(ValueError, match="5 levels, got 2"):
        gen.grid_anchors([(2, 3), (1, 2)])


def test_anchors_match_reference(reference_dir):
    ref = load_reference(reference_dir, "outputs_eval")[0]["anchors_xyxy"]
    cfg = reference_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "GLIPAnchorGenerator"
    shapes = [ShapeSpec(channels=64, stride=s) for s in STRIDES]
    gen = build_anchor_generator(cfg, shapes)
    assert isinstance(gen, GLIPAnchorGenerator)
    feats = [torch.zeros(1, 64, h, w) for h, w in [(28, 36), (14, 18), (7, 9), (4, 5), (2, 3)]]
    boxes = gen(feats)
    for ours, theirs in zip(boxes, ref, strict=True):
        assert torch.equal(ours.tensor, theirs)


def test_encode_matches_reference_atss_targets(reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    train = load_reference(reference_dir, "outputs_train")
    assert tuple(train["padded_batch_shape"]) == (2, 3, 224, 352)
    gen = GLIPAnchorGenerator(reference_cfg())
    anchors = torch.cat(gen.grid_anchors([(28, 44), (14, 22), (7, 11), (4, 6), (2, 3)]))
    assert anchors.shape == (1647, 4)
    coder = BoxCoder()
    for img in range(2):
        matched = train["atss_matched_box_index"][img].long()
        positive = matched >= 0
        gt = inputs["train_gt_boxes_resized_xyxy"][img][matched[positive]]
        targets = coder.encode(gt, anchors[positive])
        expected = train["atss_reg_targets_positive"][img]
        assert targets.shape == expected.shape == (train["atss_num_positive"][img], 4)
        torch.testing.assert_close(targets, expected, rtol=1e-5, atol=1e-5)


def test_encode_hand_values():
    anchor = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # width 10, centre 4.5
    gt = torch.tensor([[5.0, 0.0, 14.0, 19.0]])  # width 10, height 20, centre (9.5, 9.5)
    deltas = BoxCoder().encode(gt, anchor)
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2.0)]]))


def test_decode_round_trip_and_clamp():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 300
    anchors = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 200 + 4], dim=1)
    xy2 = torch.rand(50, 2, generator=g) * 300
    gt = torch.cat([xy2, xy2 + torch.rand(50, 2, generator=g) * 200 + 4], dim=1)
    coder = BoxCoder()
    torch.testing.assert_close(
        coder.decode(coder.encode(gt, anchors), anchors), gt, rtol=0, atol=1e-3
    )

    anchor = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    # dw / 5 = 100 is clamped to log(1000/16): the width becomes 10 * 62.5 = 625.
    box = coder.decode(torch.tensor([[0.0, 0.0, 500.0, 0.0]]), anchor)
    torch.testing.assert_close(box, torch.tensor([[4.5 - 312.0, 0.0, 4.5 + 312.0, 9.0]]))
    with pytest.raises(ValueError, match="must both be"):
        coder.decode(torch.zeros(2, 4), anchor)


def test_decode_keeps_dtype():
    anchors = torch.tensor([[0.0, 0.0, 15.0, 31.0]])
    out = BoxCoder().decode(torch.zeros(1, 4, dtype=torch.float64), anchors)
    assert out.dtype == torch.float64
    assert out.tolist() == [[0.0, 0.0, 15.0, 31.0]]


def test_legacy_iou_area_clip():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_area_legacy(a).tolist() == [100.0, 1.0]
    iou = pairwise_iou_legacy(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 0.0], [0.0, 0.0]]))
    # A one-pixel box inside a 10 x 10 box: inclusive extents give 1 / 100, not 0.
    torch.testing.assert_close(pairwise_iou_legacy(a, a), torch.tensor([[1.0, 0.01], [0.01, 1.0]]))
    clipped = clip_boxes_legacy(torch.tensor([[-5.0, 3.0, 400.0, 300.0]]), height=200, width=300)
    assert clipped.tolist() == [[0.0, 3.0, 299.0, 199.0]]


def test_bad_config():
    cfg = reference_cfg()
    cfg.MODEL.GLIP.ANCHOR_SIZES = [64, 128]
    with pytest.raises(ValueError, match="differ in length"):
        GLIPAnchorGenerator(cfg)
