"""Official resize rule and preprocessing parity with the reference inputs."""

import numpy as np
import pytest
import torch
from conftest import load_reference, reference_cfg
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

from glip_d2.data.transforms import GLIPResizeShortestEdge, glip_resize_shape


@pytest.mark.parametrize(
    "hw, size, max_size, expected",
    [
        ((288, 352), 224, 352, (224, 273)),  # long side truncated: 273.77 -> 273
        ((240, 400), 224, 352, (211, 351)),  # capped: round(211.2) = 211, int(351.67) = 351
        ((400, 240), 224, 352, (351, 211)),  # portrait
        ((480, 640), 800, 1333, (800, 1066)),
        ((224, 300), 224, 352, (224, 300)),  # short side already 224: no resize
        ((224, 500), 224, 352, (158, 352)),  # the cap applies before the no-resize check
        ((100, 100), 50, None, (50, 50)),
        ((427, 640), 800, 1333, (800, 1199)),  # D2's rule gives (800, 1199) too; 1199.06
        ((300, 1000), 800, 1333, (400, 1333)),  # round(399.9) = 400
        ((200, 800), 100, 350, (88, 352)),  # round(87.5) = 88 (half to even); 352 > cap kept
    ],
)
def test_official_size_rule(hw, size, max_size, expected):
    assert glip_resize_shape(*hw, size, max_size) == expected


def test_differs_from_detectron2_rule():
    # D2 rounds the long side (274) where the official rule truncates (273).
    assert T.ResizeShortestEdge.get_output_shape(288, 352, 224, 352) == (224, 274)
    assert GLIPResizeShortestEdge.get_output_shape(288, 352, 224, 352) == (224, 273)


def test_choice_sampling_and_noop():
    np.random.seed(0)
    aug = GLIPResizeShortestEdge((480, 560, 640, 720, 800), 1333)
    image = np.zeros((600, 900, 3), np.uint8)
    shapes = {aug.get_transform(image).apply_image(image).shape[:2] for _ in range(40)}
    assert shapes == {(480, 720), (560, 840), (640, 960), (720, 1080), (800, 1200)}
    assert isinstance(GLIPResizeShortestEdge(600, 1333).get_transform(image), T.NoOpTransform)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_size"):
        GLIPResizeShortestEdge(800, 0)
    with pytest.raises(ValueError, match="-5"):
        GLIPResizeShortestEdge([-5], 1333)
    with pytest.raises(ValueError, match="0x10"):
        glip_resize_shape(0, 10, 800, 1333)


@pytest.mark.parametrize("index", [0, 1])
def test_preprocessing_matches_reference(reference_dir, index):
    cfg = reference_cfg()
    expected = load_reference(reference_dir, "inputs")["preprocessed_images"][index]
    image = read_image(str(reference_dir / f"image{index}.png"), format="BGR")
    aug = GLIPResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    x = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    assert x.shape == expected.shape
    assert torch.equal(x, expected)


def test_boxes_scale_with_image(reference_dir):
    inputs = load_reference(reference_dir, "inputs")
    image = read_image(str(reference_dir / "image1.png"), format="BGR")
    tfm = GLIPResizeShortestEdge(224, 352).get_transform(image)
    boxes = tfm.apply_box(inputs["train_gt_boxes_orig_xyxy"][1].numpy())
    assert np.allclose(boxes, inputs["train_gt_boxes_resized_xyxy"][1].numpy(), atol=1e-4)
