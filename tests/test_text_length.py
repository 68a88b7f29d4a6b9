"""Text without padding (docs/DESIGN.md, "Text length"): the prompts of a pass are padded to
the longest of them, not to MAX_QUERY_LEN, and give what the official 256-token layout gives.

The reference-sized model (tests/conftest.py ``reference_cfg``) with seeded random weights and
its stochastic layers off; ``language_backbone.pad_to_max`` switches between the two layouts
on the same weights (MODEL.LANGUAGE_BACKBONE.PAD_TO_MAX). Prompts: a 3-phrase caption, a
detection prompt of 7 names and one that fills all 256 tokens (its [SEP] is column 255, where
the loss puts the [NoObj] target of background anchors).
"""

import pytest
import torch
from conftest import detector_variant, reference_cfg
from detection_sets import assert_same_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import nn

from glip_d2.text import build_detection_prompt

H, W = 64, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = reference_cfg()
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FPN.DROP_BLOCK = False
    cfg.MODEL.GLIP.FUSION_DROPOUT = 0.0
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0  # untrained scores are about 0.01
    m = build_model(cfg).eval()
    assert m.language_backbone.pad_to_max is False  # the default
    return m


@pytest.fixture(scope="module")
def prompts(model):
    tok = model.language_backbone.tokenizer
    three = {
        "caption": "a red square. a blue disc. a green ring",
        "phrase_spans": [[[2, 12]], [[16, 25]], [[29, 39]]],
    }
    caption, spans = build_detection_prompt(
        ["cat", "dog", "traffic light", "zebra", "bus", "potted plant", "person"]
    )
    seven = {"caption": caption, "phrase_spans": spans}
    # 80 names need 319 word pieces: the prompt is cut at 256 tokens; its phrases are the
    # names that lie wholly within them.
    caption, spans = build_detection_prompt([f"shape number {i}" for i in range(80)])
    inside = [s for s in spans if len(tok.tokenize(caption[: s[0][1]])) <= 250]
    full = {"caption": caption, "phrase_spans": inside}
    lengths = [len(tok(p["caption"], truncation=True, max_length=256)["input_ids"])
               for p in (three, seven, full)]  # fmt: skip
    assert lengths == [13, 18, 256]
    return {"three": three, "seven": seven, "full": full}


def _image(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8)


def _detect(model, batch, pad_to_max=False):
    model.language_backbone.pad_to_max = pad_to_max
    try:
        with torch.no_grad():
            return [o["instances"] for o in model(batch)]
    finally:
        model.language_backbone.pad_to_max = False


def _same(a, b):
    assert len(a) > 0
    assert_same_instances(a, b, box_tol=1e-4, score_tol=1e-5)


def test_detections_unpadded_equal_padded(model, prompts):
    """Equal-size images with a 3-phrase and a 7-name prompt in one batch: the unpadded pass
    (L = 18) gives the detections of the 256-token layout."""
    batch = [{"image": _image(i), **prompts[n]} for i, n in enumerate(("three", "seven"))]
    unpadded = _detect(model, batch)
    padded = _detect(model, batch, pad_to_max=True)
    for x, y in zip(unpadded, padded, strict=True):
        _same(x, y)


def test_batch_of_different_lengths_equals_each_alone(model, prompts):
    """A 13-token and a 256-token prompt in one batch (L = 256): each image gets what it gets
    alone (L = 13 and 256)."""
    batch = [{"image": _image(i), **prompts[n]} for i, n in enumerate(("three", "full"))]
    together = _detect(model, batch)
    for x, inst in zip(batch, together, strict=True):
        (alone,) = _detect(model, [x])
        _same(inst, alone)
        assert int(inst.pred_classes.max()) < len(x["phrase_spans"])


def _train_batch(prompts, names):
    batch = []
    for i, n in enumerate(names):
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [64.0, 20.0, 120.0, 90.0]])
        inst = Instances((H, W), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 0]))
        batch.append({"image": _image(10 + i), "instances": inst, **prompts[n]})
    return batch


def _losses_and_grads(model, batch, pad_to_max):
    model.language_backbone.pad_to_max = pad_to_max
    model.train()
    # Dropout off everywhere (as in the reference parity test): nn.Dropout modules and the HF
    # encoder's attention modules.
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    model.language_backbone.model.eval()
    try:
        losses = model(batch)
        sum(losses.values()).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        model.language_backbone.pad_to_max = False
    return {k: v.item() for k, v in losses.items()}, grads


def test_losses_and_gradients_unpadded_equal_padded(model, prompts):
    """Training on unpadded text (L = 18): the same losses and gradients as on 256-token
    text. The [NoObj] column 255 does not exist in the unpadded text and its target is
    dropped, as the official mask drops it on a pad (tests/test_loss.py checks the rule,
    including a prompt that fills every column; with a 256-token prompt in the batch both
    layouts are the same 256 columns)."""
    batch = _train_batch(prompts, ("three", "seven"))
    losses, grads = _losses_and_grads(model, batch, pad_to_max=False)
    ref_losses, ref_grads = _losses_and_grads(model, batch, pad_to_max=True)
    assert set(losses) == set(ref_losses)
    for k in losses:
        assert losses[k] == pytest.approx(ref_losses[k], rel=1e-5), k
    assert grads.keys() == ref_grads.keys()
    assert "language_backbone.model.embeddings.word_embeddings.weight" in grads
    # Relative to each tensor's largest gradient, plus a floor for the attention key biases,
    # whose gradient is zero up to rounding (softmax ignores a per-query constant).
    floor = 1e-8 * max(g.abs().max().item() for g in ref_grads.values())
    for k, g in grads.items():
        atol = 1e-5 * ref_grads[k].abs().max().item() + floor
        torch.testing.assert_close(g, ref_grads[k], rtol=1e-4, atol=atol, msg=k)


def test_chunk_batch_1_and_4_give_the_same_detections(model):
    """Chunks of different token lengths: one pass each (each at its own length) or four at
    a time (at the longest of the four)."""
    names = [f"{c} {s}" for c in ("red", "light sea green", "gold") for s in ("kite", "star")]
    names += ["dark slate blue crescent moon", "cat"]
    image = {"image": _image(20), "class_names": names}
    out = {}
    for chunk_batch in (1, 4):
        variant = detector_variant(model, chunk_size=2, chunk_batch=chunk_batch)
        jobs = variant.prompts.jobs(0, image)
        assert len(jobs) == 4 and len({len(j.caption) for j in jobs}) == 4
        (out[chunk_batch],) = _detect(variant, [image])
    _same(out[4], out[1])
    assert set(out[1].pred_classes.tolist()) == set(range(len(names)))
