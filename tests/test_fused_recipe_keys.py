"""Keys for training the fused head from scratch: text layers copied from the text encoder or
starting near the identity, the fusion layer scale and the fusion learning-rate factor (all off
by default)."""

import pytest
import torch
from conftest import reference_cfg
from detectron2.modeling import build_model

from glip_d2.engine import build_glip_optimizer


def _cfg(**overrides):
    cfg = reference_cfg()  # GLIP-small sizes: 2 fused layers, MiniLM (6 layers)
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 32
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg


def _text_layers(model):
    return [layer.text_layer for layer in model.head.tower if hasattr(layer, "text_layer")]


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_text_layers_copied_from_encoder():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER": [4, -1]}))
    enc = model.language_backbone.model.encoder.layer
    first, second = _text_layers(model)
    assert _same(first, enc[4]) and _same(second, enc[5])
    assert not _same(first, enc[5])
    # Default: the official random init, not the encoder's weights.
    torch.manual_seed(0)
    default = build_model(_cfg())
    assert not any(_same(t, e) for t in _text_layers(default) for e in enc)
    # A copy computes what the encoder layer computes (no clamp reached at these values).
    x = torch.randn(2, 7, 384)
    mask = torch.ones(2, 7, dtype=torch.long)
    first.eval(), enc[4].eval()
    with torch.no_grad():
        hf = enc[4](x, attention_mask=torch.zeros(2, 1, 1, 7))
        hf = hf[0] if isinstance(hf, tuple) else hf
        torch.testing.assert_close(first(x, mask), hf, rtol=1e-5, atol=1e-5)


def test_text_layers_from_encoder_checks_its_indices():
    with pytest.raises(ValueError, match=r"TEXT_LAYERS_FROM_ENCODER=\[5\].*has 2"):
        build_model(_cfg(**{"MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER": [5]}))
    with pytest.raises(ValueError, match="layer 6 not in the text encoder's 6 layers"):
        build_model(_cfg(**{"MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER": [5, 6]}))
    # The A layout's head (no deep fusion) has no text layer to initialise.
    with pytest.raises(ValueError, match="which has 0"):
        build_model(
            _cfg(
                **{
                    "MODEL.GLIP.EARLY_FUSE": False,
                    "MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT": False,
                    "MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER": [5],
                }
            )
        )


def test_fusion_layer_scale():
    default = build_model(_cfg())
    assert torch.all(default.head.tower[1].fusion.gamma_l == 0.5)  # official 1 / NUM_LAYERS
    model = build_model(_cfg(**{"MODEL.GLIP.FUSION_LAYER_SCALE": 0.05}))
    for layer in model.head.tower:
        assert torch.all(layer.fusion.gamma_v == 0.05) and torch.all(layer.fusion.gamma_l == 0.05)


def test_fusion_lr_factor():
    cfg = _cfg(**{"SOLVER.BASE_LR": 1e-3, "SOLVER.GLIP.FUSION_LR_FACTOR": 3.0})
    model = build_model(cfg)
    lr = {}
    for group in build_glip_optimizer(cfg, model).param_groups:
        for p in group["params"]:
            lr[id(p)] = group["lr"]
    params = dict(model.named_parameters())
    assert lr[id(params["head.tower.0.fusion.gamma_v"])] == pytest.approx(3e-3)
    assert lr[id(params["head.tower.1.text_layer.output.dense.weight"])] == pytest.approx(3e-3)
    assert lr[id(params["head.tower.1.text_layer.output.dense.bias"])] == pytest.approx(6e-3)
    assert lr[id(params["head.tower.0.dyconv.DyConv.0.conv.weight"])] == pytest.approx(1e-3)
    cfg.SOLVER.GLIP.FUSION_LR_FACTOR = 0.0
    with pytest.raises(ValueError, match="FUSION_LR_FACTOR must be > 0"):
        build_glip_optimizer(cfg, model)


def test_text_layer_zero_init_starts_as_layer_norm():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.GLIP.TEXT_LAYER_ZERO_INIT": True}))
    x = torch.randn(2, 7, 384) * 3 + 1
    mask = torch.ones(2, 7, dtype=torch.long)
    var = x.var(-1, unbiased=False, keepdim=True)
    standardised = (x - x.mean(-1, keepdim=True)) / (var + 1e-12).sqrt()
    for layer in _text_layers(model):
        layer.eval()
        with torch.no_grad():
            torch.testing.assert_close(layer(x, mask), standardised, rtol=1e-4, atol=1e-4)
        assert torch.count_nonzero(layer.output.dense.weight) == 0
        assert torch.count_nonzero(layer.attention.self.query.weight) > 0  # only outputs zeroed
    # With the encoder copy, the copy keeps its other weights and its outputs are zeroed again.
    both = {"MODEL.GLIP.TEXT_LAYER_ZERO_INIT": True, "MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER": [4, 5]}
    model = build_model(_cfg(**both))
    enc = model.language_backbone.model.encoder.layer
    first = _text_layers(model)[0]
    assert torch.equal(first.attention.self.query.weight, enc[4].attention.self.query.weight)
    assert torch.count_nonzero(first.attention.output.dense.weight) == 0
