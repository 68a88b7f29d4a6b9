"""The assembled GLIPDetector against the official run (docs/DESIGN.md, "Official reference
outputs").

The model is built from ``reference_cfg()`` and loaded with the converted reference weights;
its text encoder is the bundled MiniLM. Eval: each image alone with its own prompt,
detections and pre-NMS candidates compared as sets. Train: the 2-image batch with every
stochastic layer inactive, ATSS assignment exact and losses within 1e-5 relative.
"""

import numpy as np
import pytest
import torch
from conftest import load_reference, reference_cfg, reference_state_dict
from detection_sets import assert_same_detections
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from PIL import Image
from torch import nn

from glip_d2.data.transforms import GLIPResizeShortestEdge


@pytest.fixture(scope="module")
def model(reference_dir):
    cfg = reference_cfg()
    # Stochastic layers off (they only act in training; the reference's train pass had them off).
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FPN.DROP_BLOCK = False
    cfg.MODEL.GLIP.FUSION_DROPOUT = 0.0
    m = build_model(cfg)
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in reference_state_dict(reference_dir).items()
    }
    result = m.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    # Only the text encoder comes from elsewhere (the bundled package).
    assert all(k.startswith("language_backbone.model.") for k in result.missing_keys)
    return m.eval()


@pytest.fixture(scope="module")
def data(reference_dir):
    return {
        "inputs": load_reference(reference_dir, "inputs"),
        "eval": load_reference(reference_dir, "outputs_eval"),
        "train": load_reference(reference_dir, "outputs_train"),
    }


def _prompt(inputs, i):
    return {
        "caption": inputs["captions"][i],
        "phrase_spans": inputs["tokens_positive_char_spans"][i],
    }


def test_parameter_counts(model):
    """The official run's counts: Swin 5,122,572 + FPN 227,840 + head 9,368,884, less the
    unused cls_logits (80 x 64 + 80) that glip_d2 drops; MiniLM 22,565,376."""
    counts = {"language_backbone": 0, "other": 0}
    for name, p in model.named_parameters():
        counts["language_backbone" if name.startswith("language_backbone.") else "other"] += (
            p.numel()
        )
    assert counts == {"language_backbone": 22_565_376, "other": 14_714_096}


@pytest.mark.parametrize("index", [0, 1])
def test_eval_preprocessed(model, data, index):
    """Normalised reference tensors fed to the model: candidates and detections."""
    inputs, ref = data["inputs"], data["eval"][index]
    images = ImageList.from_tensors([inputs["preprocessed_images"][index]], 32)
    assert tuple(images.tensor.shape) == tuple(ref["padded_input_shape"])
    captured = []
    post = model.post_processor
    original = post.candidates

    def record(*args):
        out = original(*args)
        captured.append(out)
        return out

    post.candidates = record
    try:
        with torch.no_grad():
            (out,) = model.inference([_prompt(inputs, index)], images, do_postprocess=False)
    finally:
        del post.candidates
    boxes, scores, labels = captured[0]
    assert boxes.shape[0] == [182, 510][index]
    assert_same_detections(
        boxes,
        scores,
        labels + 1,
        ref["pre_nms_boxes_xyxy"],
        ref["pre_nms_scores"],
        ref["pre_nms_labels"],
    )
    inst = out["instances"]
    assert len(inst) == [58, 100][index]
    assert_same_detections(
        inst.pred_boxes.tensor,
        inst.scores,
        inst.pred_classes + 1,
        ref["det_boxes_resized_xyxy"],
        ref["det_scores"],
        ref["det_labels"],
    )


@pytest.mark.parametrize("index", [0, 1])
def test_eval_from_png(model, data, reference_dir, index):
    """Raw PNG -> BGR uint8 -> GLIPResizeShortestEdge -> model, boxes at the original size."""
    inputs, ref = data["inputs"], data["eval"][index]
    rgb = np.asarray(Image.open(reference_dir / f"image{index}.png").convert("RGB"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    resized = GLIPResizeShortestEdge(224, 352).get_transform(bgr).apply_image(bgr)
    image = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    assert tuple(image.shape[1:]) == tuple(inputs["preprocessed_sizes_hw"][index])
    height, width = rgb.shape[:2]
    assert (width, height) == tuple(ref["orig_image_size_wh"])
    x = {"image": image, "height": height, "width": width, **_prompt(inputs, index)}
    with torch.no_grad():
        (out,) = model([x])
    inst = out["instances"]
    assert inst.image_size == (height, width)
    assert_same_detections(
        inst.pred_boxes.tensor,
        inst.scores,
        inst.pred_classes + 1,
        ref["det_boxes_orig_xyxy"],
        ref["det_scores"],
        ref["det_labels"],
    )


def test_train_assignment_and_losses(model, data):
    inputs, ref = data["inputs"], data["train"]
    batch = []
    for i in range(2):
        inst = Instances(tuple(inputs["preprocessed_sizes_hw"][i]))
        inst.gt_boxes = Boxes(inputs["train_gt_boxes_resized_xyxy"][i])
        inst.gt_classes = inputs["train_gt_phrase_index"][i]
        batch.append({"image": torch.zeros(3, 1, 1), "instances": inst, **_prompt(inputs, i)})
    images = ImageList.from_tensors(list(inputs["preprocessed_images"]), 32)
    assert tuple(images.tensor.shape) == tuple(ref["padded_batch_shape"])

    matched = []
    original = model.loss.match

    def record(*args):
        out = original(*args)
        matched.extend(out)
        return out

    model.loss.match = record
    model.train()
    # Dropout off everywhere: the head's BERT layers use nn.Dropout modules, the HF encoder
    # also consults its attention modules' training flag.
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    model.language_backbone.model.eval()
    try:
        losses = model.losses(batch, images)
    finally:
        del model.loss.match
        model.eval()
    for i in range(2):
        assert torch.equal(matched[i], ref["atss_matched_box_index"][i].long())
    assert set(losses) == {"loss_dot_product_token", "loss_reg", "loss_centerness"}
    for k, v in losses.items():
        assert v.item() == pytest.approx(ref["losses_float"][k], rel=1e-5), k
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad is not None
    model.zero_grad(set_to_none=True)
