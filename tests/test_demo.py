"""demo/demo.py end to end on a generated image with the reference-sized model."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_reference


@pytest.fixture(scope="module")
def small_setup(reference_dir, tmp_path_factory):
    """A glip_d2 checkpoint of the reference model and a config file with its sizes."""
    from conftest import reference_cfg
    from safetensors.torch import load_file

    from glip_d2.checkpoint import convert_official_state_dict
    from glip_d2.text.tokenizer import bundled_minilm_path

    tmp = tmp_path_factory.mktemp("demo")
    sd = load_reference(reference_dir, "state_dict_official_no_lang")
    for k, v in load_file(str(bundled_minilm_path() / "model.safetensors")).items():
        sd["language_backbone.body.model." + k] = v
    converted, _ = convert_official_state_dict(sd)
    weights = tmp / "small.pth"
    torch.save({"model": converted}, weights)
    cfg = reference_cfg()
    cfg.MODEL.WEIGHTS = str(weights)
    config = tmp / "small.yaml"
    config.write_text(cfg.dump())
    image = np.full((240, 320, 3), 200, np.uint8)
    cv2.rectangle(image, (40, 50), (150, 170), (40, 40, 220), -1)  # a red square (BGR)
    cv2.circle(image, (240, 120), 50, (200, 60, 20), -1)  # a blue disc
    image_path = tmp / "shapes.png"
    cv2.imwrite(str(image_path), image)
    return tmp, config, image_path


def test_demo_cli_end_to_end(small_setup):
    tmp, config, image_path = small_setup
    out_dir = tmp / "out"
    cmd = [sys.executable, str(REPO_ROOT / "demo" / "demo.py"), "--config-file", str(config),
           "--input", str(image_path), "--classes", "red square", "blue disc",
           "--output", str(out_dir), "--confidence-threshold", "0.07"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out_dir / "shapes.json").read_text())
    assert record["phrases"] == ["red square", "blue disc"]
    assert record["image"] == str(image_path)
    # the reference model's random weights score about 0.07-0.076; some detections pass 0.07
    assert len(record["detections"]) > 0
    for det in record["detections"]:
        assert det["score"] >= 0.07 and det["phrase"] == record["phrases"][det["phrase_index"]]
        x1, y1, x2, y2 = det["box_xyxy"]
        assert 0 <= x1 <= x2 <= 319 and 0 <= y1 <= y2 <= 239
    drawn = cv2.imread(str(out_dir / "shapes.jpg"))
    assert drawn.shape == (240, 320, 3)
    assert np.abs(drawn.astype(int) - cv2.imread(str(image_path)).astype(int)).max() > 50


def test_demo_rejects_bad_arguments(small_setup):
    tmp, config, image_path = small_setup
    demo = str(REPO_ROOT / "demo" / "demo.py")
    bad = subprocess.run(
        [sys.executable, demo, "--config-file", str(config), "--input", str(tmp / "nope.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "nope.png" in bad.stderr
    spans = subprocess.run(
        [sys.executable, demo, "--config-file", str(config), "--input", str(image_path),
         "--prompt", "a cat", "--phrase-spans", "[[[0,"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert spans.returncode != 0 and "--phrase-spans is not valid JSON" in spans.stderr
