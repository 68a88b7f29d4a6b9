"""The transfer recipes (configs/transfer/): each tuning mode trains exactly its parameters.

One optimizer step of the small recipes on a real GLIP-small: trainable parameters move,
all others keep their values, and frozen submodules stay in eval mode under ``model.train()``.
"""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from glip_d2.config import add_glip_config
from glip_d2.engine import apply_tuning_mode, build_glip_optimizer
from glip_d2.engine.optimizer import LINEAR_PROBE_KEYWORDS, PROMPT_PARAM


def _cfg(mode):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(f"configs/transfer/glip_small_{mode}.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR = True  # same parameter set for every mode
    return cfg


def _batch():
    torch.manual_seed(1)
    inputs = []
    for boxes, classes in (([[4.0, 6.0, 40.0, 50.0]], [0]), ([[20.0, 8.0, 60.0, 30.0]], [1])):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor(classes)
        inputs.append(
            {
                "image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
                "caption": "red circle. blue square",
                "phrase_spans": [[[0, 10]], [[12, 23]]],
                "instances": inst,
            }
        )
    return inputs


def _expected(mode, names):
    if mode == "prompt":
        return {PROMPT_PARAM}
    if mode == "linear_prob":
        return {n for n in names if any(k in n for k in LINEAR_PROBE_KEYWORDS)}
    frozen_swin = ("backbone.bottom_up.patch_embed.", "backbone.bottom_up.layers.0.")
    return {n for n in names if not n.startswith(frozen_swin)}  # full, SWIN.FREEZE_AT 2


@pytest.mark.parametrize("mode", ["full", "prompt", "linear_prob"])
def test_one_step_moves_exactly_the_mode_s_parameters(mode):
    cfg = _cfg(mode)
    torch.manual_seed(0)
    model = build_model(cfg)
    trainable = set(apply_tuning_mode(cfg, model))
    names = [n for n, _ in model.named_parameters()]
    assert trainable == _expected(mode, names)
    if mode == "linear_prob":
        assert trainable == {
            "head.bbox_pred.weight", "head.bbox_pred.bias", "head.centerness.weight",
            "head.centerness.bias", "head.dot_product_projection_text.weight",
            "head.dot_product_projection_text.bias", "head.log_scale", "head.bias_lang",
            "head.bias0",
        }  # fmt: skip

    model.train()
    frozen_modules = {
        "full": ["backbone.bottom_up.patch_embed", "backbone.bottom_up.layers.0"],
        "prompt": ["backbone", "head", "language_backbone.model"],
        "linear_prob": ["backbone", "language_backbone", "head.tower", "head.scales"],
    }[mode]
    modules = dict(model.named_modules())
    for name in frozen_modules:
        assert all(not m.training for m in modules[name].modules()), name
    assert model.training and modules["backbone.bottom_up.layers.1"].training == (mode == "full")

    optimizer = build_glip_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    if mode == "prompt":  # the table trains at BASE_LR 0.05, not at the text encoder's LANG_LR
        assert lrs[id(dict(model.named_parameters())[PROMPT_PARAM])] == pytest.approx(0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model(_batch())
    sum(losses.values()).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # every trainable tensor got a gradient and moved (an AdamW step is ~lr for any gradient),
    # nothing else did
    assert moved == trainable, (sorted(moved - trainable)[:5], sorted(trainable - moved)[:5])


@pytest.mark.parametrize("model", ["glip_t", "glip_small"])
def test_recipes_hold_the_official_settings(model):
    official = {  # microsoft/GLIP README, "Fine-tuning" commands (details in the config headers)
        "full": (1e-4, 0.05),
        "prompt": (0.05, 0.25),
        "linear_prob": (1e-4, 0.05),
    }
    for mode, (lr, wd) in official.items():
        cfg = add_glip_config(get_cfg())
        cfg.merge_from_file(f"configs/transfer/{model}_{mode}.yaml")
        s = cfg.SOLVER
        assert (s.GLIP.TUNING, s.BASE_LR, s.WEIGHT_DECAY) == (mode, lr, wd)
        assert (s.GLIP.LANG_LR, s.IMS_PER_BATCH, s.EMA.ENABLED) == (1e-5, 4, False)
        assert cfg.MODEL.SWIN.FREEZE_AT == 2 and cfg.DATASETS.GLIP.FIXED_TRAIN_PROMPT
        assert cfg.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR == (mode == "prompt")
        assert cfg.MODEL.LANGUAGE_BACKBONE.FREEZE == (mode != "full")
        assert cfg.OUTPUT_DIR == f"output/transfer/{model}_{mode}"
