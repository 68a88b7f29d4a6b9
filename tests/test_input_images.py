"""Images entering glip_d2: what GLIPPredictor accepts and refuses (issue #13 item 2), and
non-finite pixels refused before the backbone, in the predictor and in the model (item 1)."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from glip_d2.config import add_glip_config
from glip_d2.image_input import check_image_array
from glip_d2.predictor import GLIPPredictor

PROMPT = ["red circle", "blue star"]


@pytest.fixture(scope="module")
def predictor():
    """GLIP-small with deformable convolutions (where NaN offsets crash the process), random
    weights, 96-pixel test images and 32-token prompts."""
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file("configs/quick_schedules/glip_small_instant_test.yaml")
    cfg.MODEL.GLIP.USE_DFCONV = True
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 32
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0
    torch.manual_seed(0)
    return GLIPPredictor(cfg, model=build_model(cfg))


def _image(h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_and_float_0_255_are_accepted(predictor):
    for image in (_image(), _image().astype(np.float32), _image().astype(np.float64)):
        out = predictor(image, PROMPT)
        assert out["instances"].image_size == (60, 80) and len(out["instances"]) > 0
    # an all-black float image is black in any scale: accepted
    assert len(predictor(np.zeros((60, 80, 3), np.float32), PROMPT)["instances"]) > 0


@pytest.mark.parametrize(
    "image, error, match",
    [
        (_image()[:, :, :1], ValueError, r"shape \(60, 80, 1\): a grey image"),
        (_image()[:, :, 0], ValueError, r"shape \(60, 80\): a grey image"),
        (np.zeros((60, 80, 4), np.uint8), ValueError, r"shape \(60, 80, 4\).*alpha"),
        (np.zeros((3, 60, 80), np.uint8), ValueError, r"\(C, H, W\) layout"),
        (np.zeros((2, 60, 80, 3), np.uint8), ValueError, "a batch"),
        (np.zeros((0, 80, 3), np.uint8), ValueError, "empty"),
        (_image().astype(np.uint16) * 257, TypeError, r"uint16.*257"),
        (_image() > 128, TypeError, "bool"),
        (_image().astype(np.int64), TypeError, r"int64.*astype\(np.uint8\)"),
        (torch.from_numpy(_image()), TypeError, r"torch.*permute"),
        (_image().astype(np.float32) / 255, ValueError, r"\[0, 1\].*multiply it by 255"),
        (_image().astype(np.float32) - 128, ValueError, "outside 0-255"),
        (_image().astype(np.float32) * 257, ValueError, "outside 0-255"),
    ],
)
def test_refused_images_say_how_to_pass_them(predictor, image, error, match):
    with pytest.raises(error, match=match):
        predictor(image, PROMPT)


def test_nonfinite_pixel_names_the_image(predictor):
    bad = _image().astype(np.float32)
    bad[7, 9, 2] = np.nan
    with pytest.raises(ValueError, match=r"image 1: 1 NaN or infinite.*row 7, column 9"):
        predictor.predict_batch([_image(), bad], [PROMPT, PROMPT])
    bad[7, 9, 2] = np.inf
    with pytest.raises(ValueError, match="image 0: 1 NaN or infinite"):
        predictor(bad, PROMPT)
    with pytest.raises(ValueError, match="image 0"):
        check_image_array(np.full((4, 4, 3), -np.inf, np.float16))


def test_model_refuses_nonfinite_training_and_test_images(predictor):
    """A float image with one NaN, as a mapper would hand it over (file_name, image_id), is
    refused before the backbone, in training and at inference."""
    model = predictor.model
    image = torch.from_numpy(_image(96, 96)).permute(2, 0, 1).float()
    bad = image.clone()
    bad[1, 50, 60] = float("nan")
    inst = Instances((96, 96), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]])))
    inst.gt_classes = torch.tensor([0])
    prompt = {"caption": "a red circle", "phrase_spans": [[[2, 12]]]}
    good_input = {"image": image, "file_name": "ok.jpg", "image_id": 1, **prompt}
    bad_input = {"image": bad, "file_name": "broken.jpg", "image_id": 7, **prompt}
    model.train()
    try:
        with pytest.raises(ValueError, match=r"image 1 \('broken.jpg', image_id=7\): 1 of"):
            model([{**good_input, "instances": inst}, {**bad_input, "instances": inst}])
    finally:
        model.eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"image 0 \('broken.jpg'"):
        model([bad_input])
    bad[1, 50, 60] = float("-inf")
    with torch.no_grad(), pytest.raises(ValueError, match="NaN or infinite"):
        model([{"image": bad, **prompt}])
    with torch.no_grad():  # uint8 images are not looked at; finite float ones pass
        assert len(model([{**good_input, "image": image.to(torch.uint8)}, good_input])) == 2
