"""Shared fixtures: the official reference outputs and tiny configs."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Outputs of the official implementation on a small model (docs/DESIGN.md, "Official reference
# outputs"): a data folder outside the repository; without it the tests that need it skip.
REFERENCE_DIR = Path(
    os.environ.get(
        "GLIP_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference" / "official_glip_small"
    )
)


@pytest.fixture(scope="session")
def reference_dir():
    if not (REFERENCE_DIR / "inputs.pt").is_file():
        pytest.skip(
            f"official reference outputs not found at {REFERENCE_DIR} (set GLIP_REFERENCE_DIR)"
        )
    return REFERENCE_DIR


def load_reference(reference_dir, name):
    """Load one reference file: inputs, outputs_eval, outputs_train or the state dict."""
    return torch.load(reference_dir / f"{name}.pt", map_location="cpu", weights_only=True)


def reference_cfg():
    """A config with the sizes of the official reference model (docs/DESIGN.md, "Official
    reference outputs")."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "Base-GLIP.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.SWIN.EMBED_DIM = 48
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [2, 4, 8, 16]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.GLIP.CHANNELS = 64
    cfg.MODEL.GLIP.NUM_LAYERS = 2
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bundled-minilm"
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 384
    cfg.MODEL.GLIP.INFERENCE_TH = 0.0106
    cfg.INPUT.MIN_SIZE_TEST = 224
    cfg.INPUT.MAX_SIZE_TEST = 352
    return cfg


def reference_state_dict(reference_dir):
    """The reference weights in glip_d2's layout (no text encoder: it comes from the package)."""
    from glip_d2.checkpoint import convert_official_state_dict

    official = load_reference(reference_dir, "state_dict_official_no_lang")
    converted, _ = convert_official_state_dict(official)
    return converted


def detector_variant(model, **kwargs):
    """A GLIPDetector sharing ``model``'s modules with other settings (chunking, ...), in eval
    mode."""
    from glip_d2.modeling.meta_arch import GLIPDetector

    args = dict(
        backbone=model.backbone,
        language_backbone=model.language_backbone,
        head=model.head,
        anchor_generator=model.anchor_generator,
        loss=model.loss,
        post_processor=model.post_processor,
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
    )
    args.update(kwargs)
    return GLIPDetector(**args).eval()
