"""GLIP losses (glip_d2/modeling/loss.py) on hand-computed cases.

The parity of the full training losses with the official run is in test_reference_parity.py.
"""

import math

import pytest
import torch

from glip_d2.modeling.anchors import GLIPAnchorGenerator
from glip_d2.modeling.box_coder import BoxCoder
from glip_d2.modeling.head import flatten_levels
from glip_d2.modeling.loss import (
    GLIPLoss,
    centerness_targets,
    giou_loss,
    token_sigmoid_focal_loss,
)

LN2 = math.log(2.0)
FL_POS = 0.25 * 0.25 * LN2  # focal loss at logit 0 for target 1 (alpha 0.25, gamma 2)
FL_NEG = 0.75 * 0.25 * LN2  # ... for target 0


def test_focal_loss_values_and_mask():
    logits = torch.zeros(1, 2, 3)
    targets = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third column is a pad: never counted
    loss = token_sigmoid_focal_loss(logits, targets, mask)
    assert loss.item() == pytest.approx(FL_POS + 3 * FL_NEG, rel=1e-6)


def test_giou_loss_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.tensor([[20.0, 0.0, 30.0, 10.0]])  # disjoint: GIoU = -(300 - 200) / 300
    assert giou_loss(a, b).item() == pytest.approx(1 + 1 / 3, rel=1e-6)
    # A predicted box with x2 < x1 collapses to zero width at x1 (no overlap, enclosed by a).
    flipped = torch.tensor([[10.0, 0.0, 0.0, 10.0]])
    assert giou_loss(flipped, a).item() == pytest.approx(1.0, rel=1e-6)
    # Weights multiply each pair's loss.
    two = giou_loss(torch.cat([a, a]), torch.cat([a, b]), torch.tensor([0.5, 2.0]))
    assert two.item() == pytest.approx(2 * (1 + 1 / 3), rel=1e-6)


def test_centerness_targets():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    # Anchor centres (5, 5): the box centre; (1, 2): l=1, r=3, t=b=2.
    anchors = torch.tensor([[-5.0, -5.0, 15.0, 15.0], [-4.0, -8.0, 6.0, 12.0]])
    out = centerness_targets(boxes, anchors)
    assert out[0].item() == pytest.approx(1.0)
    assert out[1].item() == pytest.approx(math.sqrt(1 / 3), rel=1e-6)


def _setup(num_images=1):
    gen = GLIPAnchorGenerator(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[[1.0]],
        strides=[8, 16, 32, 64, 128],
    )
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    levels = gen.grid_anchors(sizes)
    anchors, per_level = torch.cat(levels), [len(a) for a in levels]
    L, N = 8, sum(h * w for h, w in sizes)
    outputs = {
        "logits": torch.zeros(num_images, N, L, requires_grad=True),
        "bbox_reg": torch.zeros(num_images, N, 4, requires_grad=True),
        "centerness": torch.zeros(num_images, N, 1, requires_grad=True),
    }
    mask = torch.zeros(num_images, L, dtype=torch.long)
    mask[:, :4] = 1
    return outputs, anchors, per_level, mask


def test_loss_with_zero_outputs():
    outputs, anchors, per_level, mask = _setup()
    box = torch.tensor([[-4.0, -4.0, 59.0, 59.0]])  # exactly P3 anchor (3, 3): 5 positives
    token_map = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    loss = GLIPLoss(box_coder=BoxCoder())
    losses = loss(outputs, anchors, per_level, [box], [token_map], mask)
    n, p = anchors.shape[0], 5
    # Positives: 2 target tokens + 2 negatives; background: 4 negatives (the [NoObj] column 7
    # is a masked pad). Divided by the 5 positives.
    expected = (p * (2 * FL_POS + 2 * FL_NEG) + (n - p) * 4 * FL_NEG) / p
    assert losses["loss_dot_product_token"].item() == pytest.approx(expected, rel=1e-6)
    # BCE at logit 0 is ln 2 whatever the target.
    assert losses["loss_centerness"].item() == pytest.approx(LN2, rel=1e-6)
    # Zero deltas decode to the anchors; the centre anchor equals the box (GIoU 1), its four
    # neighbours are shifted by 8 px: GIoU (areas without +1) = 55*63 / (71*63), enclosing =
    # union; their centerness targets are sqrt(23.5 / 39.5).
    ctr = math.sqrt(23.5 / 39.5)
    expected_reg = 2.0 * 4 * ctr * (1 - 55 / 71) / (4 * ctr + 1.0)
    assert losses["loss_reg"].item() == pytest.approx(expected_reg, rel=1e-5)
    sum(losses.values()).backward()
    assert all(t.grad is not None for t in outputs.values())


def test_background_only_and_autocast():
    outputs, anchors, per_level, mask = _setup(num_images=2)
    mask[1] = 1  # image 1's prompt fills the text: [NoObj] column 7 is attended
    loss = GLIPLoss(box_coder=BoxCoder())
    empty = torch.zeros((0, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = loss(outputs, anchors, per_level, [empty, empty], [torch.zeros(0, 8)] * 2, mask)
    n = anchors.shape[0]
    expected = n * 4 * FL_NEG + n * (FL_POS + 7 * FL_NEG)  # floor of 1 positive
    assert losses["loss_dot_product_token"].dtype == torch.float32
    assert losses["loss_dot_product_token"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    sum(losses.values()).backward()
    assert outputs["bbox_reg"].grad is not None


def test_noobj_column_is_max_query_len_minus_1():
    """Text of 8 columns padded vs the same prompts unpadded (4 columns). The official [NoObj]
    target sits at column MAX_QUERY_LEN - 1 = 7: a masked pad here, so unpadded text, which
    has no column 7, gives the same loss; putting it at the unpadded text's last column (3, a
    real token) would not. With a prompt that fills all 8 columns it counts."""
    padded, anchors, per_level, mask = _setup(num_images=2)
    logits = torch.linspace(-3, 2, padded["logits"].numel()).view_as(padded["logits"])
    padded["logits"] = logits
    box = [torch.tensor([[-4.0, -4.0, 59.0, 59.0]]), torch.zeros((0, 4))]
    maps = [torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]), torch.zeros((0, 8))]
    loss = GLIPLoss(box_coder=BoxCoder(), max_query_len=8)
    ref = loss(padded, anchors, per_level, box, maps, mask)
    unpadded = {**padded, "logits": logits[:, :, :4]}
    out = loss(unpadded, anchors, per_level, box, [m[:, :4] for m in maps], mask[:, :4])
    for k in ref:
        assert out[k].item() == pytest.approx(ref[k].item(), rel=1e-6), k
    last_column = GLIPLoss(box_coder=BoxCoder())  # max_query_len None: the text's last column
    wrong = last_column(unpadded, anchors, per_level, box, [m[:, :4] for m in maps], mask[:, :4])
    wrong, right = wrong["loss_dot_product_token"].item(), ref["loss_dot_product_token"].item()
    assert abs(wrong - right) > 0.05 * right
    # Image 1's prompt fills all 8 columns: its background anchors' column 7 target counts.
    full = mask.clone()
    full[1] = 1
    with_noobj = loss(padded, anchors, per_level, box, maps, full)
    noobj = torch.zeros_like(logits[1:])
    noobj[..., 7] = 1.0  # image 1 has no box: every anchor is background
    before = token_sigmoid_focal_loss(logits[1:], torch.zeros_like(noobj), mask[1:])
    after = token_sigmoid_focal_loss(logits[1:], noobj, full[1:])
    delta = with_noobj["loss_dot_product_token"] - ref["loss_dot_product_token"]
    assert delta.item() == pytest.approx((after - before).item() / 5, rel=1e-5)  # 5 positives
    with pytest.raises(ValueError, match="MAX_QUERY_LEN=8"):
        loss({**padded, "logits": torch.zeros(2, logits.shape[1], 9)}, anchors, per_level, box,
             [torch.zeros(1, 9), torch.zeros(0, 9)], torch.ones(2, 9))  # fmt: skip


def test_flatten_order_and_shape_errors():
    outputs, anchors, per_level, mask = _setup()
    levels = [torch.arange(4 * 64.0).reshape(1, 4, 8, 8)]
    levels += [torch.zeros(1, 4, h, w) for h, w in [(4, 4), (2, 2), (1, 1), (1, 1)]]
    reg = flatten_levels(levels)  # the head's layout
    assert reg.shape == (1, 86, 4)
    assert flatten_levels([t[:, :1] for t in levels]).shape == (1, 86, 1)
    assert reg[0, 9].tolist() == [9.0, 73.0, 137.0, 201.0]  # location (1, 1), row-major
    loss = GLIPLoss(box_coder=BoxCoder())
    with pytest.raises(ValueError, match="token map"):
        loss(
            outputs,
            anchors,
            per_level,
            [torch.tensor([[0.0, 0.0, 20.0, 20.0]])],
            [torch.zeros(1, 5)],
            mask,
        )


def _distributed_worker(rank, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        outputs, anchors, per_level, mask = _setup()
        if rank == 0:  # 5 positives (see test_loss_with_zero_outputs)
            boxes, maps = [torch.tensor([[-4.0, -4.0, 59.0, 59.0]])], [torch.zeros(1, 8)]
            maps[0][0, 1:3] = 1.0
        else:  # no positives: must still join both all-reduces
            boxes, maps = [torch.zeros((0, 4))], [torch.zeros((0, 8))]
        losses = GLIPLoss(box_coder=BoxCoder())(outputs, anchors, per_level, boxes, maps, mask)
        results[rank] = {k: v.item() for k, v in losses.items()}
    finally:
        dist.destroy_process_group()


def test_normalisation_averaged_over_workers():
    """Two gloo workers: positives 5 and 0 -> every worker divides by 2.5; the GIoU sum by
    the mean centerness-target sum (1 + 4c) / 2."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(port, results), nprocs=2, join=True)
    n = 86
    c = math.sqrt(23.5 / 39.5)
    assert results[0]["loss_dot_product_token"] == pytest.approx(
        (5 * (2 * FL_POS + 2 * FL_NEG) + (n - 5) * 4 * FL_NEG) / 2.5, rel=1e-6
    )
    assert results[1]["loss_dot_product_token"] == pytest.approx(n * 4 * FL_NEG / 2.5, rel=1e-6)
    assert results[0]["loss_centerness"] == pytest.approx(5 * LN2 / 2.5, rel=1e-6)
    assert results[0]["loss_reg"] == pytest.approx(
        2.0 * 4 * c * (1 - 55 / 71) / ((1 + 4 * c) / 2), rel=1e-5
    )
    assert results[1]["loss_reg"] == 0.0 and results[1]["loss_centerness"] == 0.0
