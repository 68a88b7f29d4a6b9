"""VLDyHead and its parts: parity with the official reference, structure, batching, gradients."""

import pytest
import torch
from conftest import load_reference, reference_cfg, reference_state_dict
from detectron2.layers import ShapeSpec
from torch import nn

from glip_d2.modeling.dyconv import DyConv, DyReLU, HSigmoid, ModulatedDeformConv3x3
from glip_d2.modeling.fusion import VLFusionBlock
from glip_d2.modeling.head import VLDyHead, build_glip_head, flatten_levels
from glip_d2.modeling.text_layer import TextLayerConfig
from glip_d2.structures import TextFeatures

SIZES = [(28, 36), (14, 18), (7, 9), (4, 5), (2, 3)]  # image 0, padded 224 x 288


def _head(cfg, **kwargs):
    """A VLDyHead over the five levels a GLIP backbone of ``cfg`` gives."""
    return VLDyHead(cfg, _shapes(cfg), **kwargs)


def _shapes(cfg):
    width = cfg.MODEL.FPN.OUT_CHANNELS
    return [ShapeSpec(channels=width, stride=s) for s in cfg.MODEL.GLIP.ANCHOR_STRIDES]


def _levels(dense, sizes):
    """(B, N, C) head output -> per level (B, H_l*W_l, C)."""
    return dense.split([h * w for h, w in sizes], dim=1)


def _assert_close(actual, expected, name, rel=1e-5):
    # Rounding-level differences are a few 1e-6 of the tensor's largest magnitude; real
    # mismatches are >= 1e-4 (docs/DESIGN.md, "Official reference outputs").
    diff = (actual - expected).abs().max().item()
    bound = rel * expected.abs().max().item() + 1e-7
    assert diff <= bound, f"{name}: max abs diff {diff:.3g} > {bound:.3g}"


@pytest.fixture(scope="module")
def reference_run(reference_dir):
    head = _head(reference_cfg()).eval()
    state = {
        k[len("head.") :]: v
        for k, v in reference_state_dict(reference_dir).items()
        if k.startswith("head.")
    }
    head.load_state_dict(state, strict=True)
    ref = load_reference(reference_dir, "outputs_eval")[0]
    mask = ref["attention_mask"][None]
    hidden = ref["lang_backbone_hidden"][None]
    lang = TextFeatures(hidden, hidden * mask[..., None], mask)
    stages = []
    with torch.no_grad():
        out = head([f[None] for f in ref["fpn_outputs"]], lang, stages)
    return head, ref, out, stages, mask[0].bool()


def test_reference_tower_stages(reference_run):
    _, ref, _, stages, valid = reference_run
    assert [s["type"] for s in stages] == ["fusion", "text_layer", "dyconv"] * 2
    assert ref["tower_module_types"] == ["VLFuse", "BertEncoderLayer", "DyConv"] * 2
    for i, (ours, theirs) in enumerate(zip(stages, ref["tower"], strict=True)):
        if "visual" in theirs:
            for lvl, (a, b) in enumerate(zip(ours["visual"], theirs["visual"], strict=True)):
                assert a.shape == (1, 64, *SIZES[lvl])
                _assert_close(a[0], b, f"tower[{i}] visual P{lvl + 3}")
        if "lang_hidden" in theirs:
            # Pad rows never influence anything and may differ between implementations.
            _assert_close(
                ours["lang_hidden"][0][valid], theirs["lang_hidden"][valid], f"tower[{i}] text"
            )


def test_reference_predictions(reference_run):
    _, ref, out, _, valid = reference_run
    assert valid.sum().item() == 15
    assert out["logits"].shape == (1, sum(h * w for h, w in SIZES), 256)
    levels = {k: _levels(out[k], SIZES) for k in ("logits", "bbox_reg", "centerness")}
    for lvl, (h, w) in enumerate(SIZES):
        logits = levels["logits"][lvl]
        assert logits.shape == (1, h * w, 256)
        _assert_close(
            logits[0][:, valid], ref["head_dot_product_logits"][lvl][:, valid], f"logits P{lvl + 3}"
        )
        for key, ref_key, channels in (
            ("bbox_reg", "head_bbox_reg", 4),
            ("centerness", "head_centerness", 1),
        ):
            ours = levels[key][lvl]
            assert ours.shape == (1, h * w, channels)
            theirs = flatten_levels([ref[ref_key][lvl][None]])  # official (C, H, W) maps
            _assert_close(ours, theirs, f"{key} P{lvl + 3}")


def test_parameter_layout_and_counts(reference_run):
    head = reference_run[0]
    counts = {}
    for name, p in head.named_parameters():
        part = name.split(".")[2] if name.startswith("tower.") else "prediction"
        counts[part] = counts.get(part, 0) + p.numel()
    # The official run's counts; its prediction figure also held the dropped cls_logits
    # (80*64 + 80 = 5,200 more).
    assert counts == {
        "fusion": 5_524_992,
        "text_layer": 3_548_928,
        "dyconv": 264_408,
        "prediction": 25_356,
    }
    assert {n for n, _ in head.named_buffers()} == set()
    assert head.tower[0].fusion.gamma_v.shape == (64,)
    assert head.tower[1].text_layer.intermediate.dense.weight.shape == (1536, 384)


def _small_cfg(**overrides):
    cfg = reference_cfg()
    cfg.MODEL.GLIP.CHANNELS = 32
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.GLIP.FUSION_EMBED_DIM = 64
    cfg.MODEL.GLIP.FUSION_NUM_HEADS = 4
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 48
    for key, value in overrides.items():
        setattr(cfg.MODEL.GLIP, key, value)
    return cfg


_SMALL_TEXT = TextLayerConfig(hidden_size=48, num_attention_heads=4, intermediate_size=96)
_SMALL_SIZES = [(16, 12), (8, 6), (4, 3), (2, 2), (1, 1)]


def _small_inputs(batch, channels=32, length=10, valid=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, channels, h, w, generator=g) for h, w in _SMALL_SIZES]
    hidden = torch.randn(batch, length, 48, generator=g)
    masks = torch.zeros(batch, length, dtype=torch.long)
    masks[:, :valid] = 1
    return feats, TextFeatures(hidden, hidden * masks[..., None], masks)


def _randomize(module, seed=1):
    # Fresh heads start with near-zero offsets and tiny convs; random weights exercise more.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module


def test_batch_of_two_equals_each_alone():
    # Catches a batch-wide (instead of per-image) prefix in the DyConv offset reuse.
    # float64: batched and single-image convolutions sum in different orders, and the
    # random offsets amplify fp32 rounding to ~1e-5; in float64 only a real mixing shows.
    head = _randomize(_head(_small_cfg(), lang_config=_SMALL_TEXT)).eval().double()
    feats, lang = _small_inputs(2)
    feats = [f.double() for f in feats]
    lang = TextFeatures(lang.hidden.double(), lang.embedded.double(), lang.mask)
    lang.mask[1, 6:8] = 1
    with torch.no_grad():
        both = head(feats, lang)
        for i in range(2):
            alone = head([f[i : i + 1] for f in feats], lang.index_select(torch.tensor([i])))
            for key in ("logits", "bbox_reg", "centerness"):
                torch.testing.assert_close(both[key][i : i + 1], alone[key], rtol=1e-9, atol=1e-9)


def test_offset_prefix_reuse_for_coarser_level():
    # The coarser level's conv reads the first 18*h'*w' offsets / 9*h'*w' masks of the level's
    # own (18, h, w) block: check against explicit per-image slicing.
    torch.manual_seed(0)
    dy = _randomize(DyConv(8, 8, gn_groups=4), seed=3).eval()
    feats = [torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)]
    with torch.no_grad():
        om = dy.offset(feats[0])
        off = om[:, :18].reshape(2, -1)[:, : 18 * 9].reshape(2, 18, 3, 3)
        msk = om[:, 18:].sigmoid().reshape(2, -1)[:, : 9 * 9].reshape(2, 9, 3, 3)
        coarse = dy.DyConv[0](feats[1], off, msk)
        up = nn.functional.interpolate(coarse, size=(6, 5), mode="bilinear", align_corners=True)
        mid = dy.DyConv[1](feats[0], om[:, :18], om[:, 18:].sigmoid())
        terms = torch.stack([mid, up])
        attn = dy.h_sigmoid(torch.stack([dy.AttnConv(t) for t in (mid, up)]))
        expected = dy.relu((terms * attn).mean(0))
        torch.testing.assert_close(dy(feats)[0], expected)


def test_glip_a_without_fusion_uses_embedded_features():
    cfg = _small_cfg(EARLY_FUSE=False, USE_FUSED_FEATURES_DOT_PRODUCT=False)
    head = _head(cfg, lang_config=_SMALL_TEXT).eval()
    keys = {k for k in head.state_dict() if k.startswith("tower.")}
    assert keys and all(k.split(".")[2] == "dyconv" for k in keys)
    feats, lang = _small_inputs(1)
    with torch.no_grad():
        out = head(feats, lang)
        changed = head(feats, TextFeatures(lang.hidden + 1.0, lang.embedded, lang.mask))
    levels = _levels(out["logits"], _SMALL_SIZES)
    assert [t.shape for t in levels] == [(1, h * w, 10) for h, w in _SMALL_SIZES]
    torch.testing.assert_close(out["logits"], changed["logits"])
    # Fresh weights: token bias = bias0 = -log(99) dominates (visual features are O(1)).
    assert abs(levels[4].mean().item() + 4.59512) < 0.5


def test_early_fusion_without_fused_dot_product_drops_last_text_layer():
    head = _head(_small_cfg(USE_FUSED_FEATURES_DOT_PRODUCT=False), lang_config=_SMALL_TEXT)
    assert hasattr(head.tower[0], "text_layer") and hasattr(head.tower[0], "fusion")
    assert not hasattr(head.tower[1], "text_layer") and hasattr(head.tower[1], "fusion")


def test_layer0_rule_when_fpn_width_differs():
    cfg = _small_cfg()
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    head = _head(cfg, lang_config=_SMALL_TEXT)
    first, second = head.tower[0].dyconv, head.tower[1].dyconv
    assert first.offset is None and first.AttnConv is None and type(first.relu) is nn.ReLU
    assert first.DyConv[1].conv.weight.shape == (32, 16, 3, 3)
    assert second.offset is not None and isinstance(second.relu, DyReLU)


def test_initialisation_values():
    head = _head(_small_cfg(), lang_config=_SMALL_TEXT)
    assert head.bias0.item() == pytest.approx(-4.59512, abs=1e-5)
    assert head.log_scale.item() == 0.0 and head.bias_lang.abs().sum().item() == 0.0
    assert [s.scale.item() for s in head.scales] == [1.0] * 5
    assert torch.all(head.tower[1].fusion.gamma_l == 0.5)  # 1 / NUM_LAYERS
    assert head.bbox_pred.bias.abs().sum().item() == 0.0
    assert head.tower[0].dyconv.relu.fc[0].weight.shape == (8, 32)  # C -> C/4 -> 4C
    assert head.tower[0].dyconv.relu.fc[2].weight.shape == (128, 8)


def test_gradients_reach_every_parameter():
    head = _randomize(_head(_small_cfg(), lang_config=_SMALL_TEXT))
    head.train()
    feats, lang = _small_inputs(2)
    out = head(feats, lang)
    valid = lang.mask.bool()
    loss = out["logits"][valid[:, None, :].expand_as(out["logits"])].sum()
    loss = loss + out["bbox_reg"].square().sum() + out["centerness"].square().sum()
    loss.backward()
    missing = [
        n for n, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert missing == []
    assert head.tower[0].dyconv.offset.weight.grad.abs().sum() > 0


def test_tower_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    plain = _randomize(_head(_small_cfg(), lang_config=_SMALL_TEXT)).train()
    recomputed = _head(_small_cfg(USE_CHECKPOINT=True), lang_config=_SMALL_TEXT).train()
    recomputed.load_state_dict(plain.state_dict())
    assert recomputed.use_checkpoint and not plain.use_checkpoint
    feats, lang = _small_inputs(2)
    grads, losses = [], []
    for head in (plain, recomputed):
        torch.manual_seed(3)  # same fusion-dropout masks in both runs
        out = head(feats, lang)
        loss = sum(out[k].square().mean() for k in ("logits", "bbox_reg", "centerness"))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in head.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fusion_ignores_padded_token_values():
    torch.manual_seed(0)
    block = VLFusionBlock(16, 24, 32, 4, init_layer_scale=0.5).eval()
    feats = [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    hidden = torch.randn(1, 7, 24)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    noisy = hidden.clone()
    noisy[:, 4:] = 100.0
    with torch.no_grad():
        v1, l1 = block(feats, hidden, mask)
        v2, l2 = block(feats, noisy, mask)
    for a, b in zip(v1, v2, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(l1[:, :4], l2[:, :4])
    assert [v.shape for v in v1] == [(1, 16, 4, 4), (1, 16, 2, 2)]


def test_deform_conv_with_zero_offsets_is_plain_conv():
    torch.manual_seed(0)
    conv = ModulatedDeformConv3x3(4, 6, stride=2)
    x = torch.randn(2, 4, 7, 5)
    offset = torch.zeros(2, 18, 4, 3)
    mask = torch.ones(2, 9, 4, 3)
    expected = nn.functional.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(conv(x, offset, mask), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        conv(x, offset, 0.5 * mask),
        0.5 * (expected - conv.bias[:, None, None]) + conv.bias[:, None, None],
        rtol=1e-5,
        atol=1e-5,
    )


def test_hsigmoid_and_dyrelu_values():
    assert HSigmoid()(torch.tensor([-4.0, -3.0, 0.0, 1.5, 3.0, 5.0])).tolist() == [
        0.0,
        0.0,
        0.5,
        0.75,
        1.0,
        1.0,
    ]
    relu = DyReLU(4)
    with torch.no_grad():
        for p in relu.parameters():
            p.zero_()
    # All coefficients h-sigmoid(0) = 0.5: a1 = 1, b1 = 0, a2 = 0, b2 = 0 -> plain ReLU.
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(relu(x), x.clamp(min=0))


def test_build_and_bad_inputs():
    cfg = _small_cfg()
    head = build_glip_head(
        cfg,
        _shapes(cfg),
        lang_config={"hidden_size": 48, "num_attention_heads": 4, "intermediate_size": 96},
    )
    assert isinstance(head, VLDyHead)
    with pytest.raises(ValueError, match="HIDDEN_SIZE=48"):
        _head(cfg, lang_config=TextLayerConfig(hidden_size=64))
    feats, lang = _small_inputs(1)
    with pytest.raises(ValueError, match="expects 5 feature levels, got 4"):
        head(feats[:4], lang)
    with pytest.raises(TypeError, match="TextFeatures"):
        head(feats, {"hidden": lang.hidden})
    with pytest.raises(ValueError, match=r"mask \(1, 9\) must be \(B, L\) = \(1, 10\)"):
        TextFeatures(lang.hidden, lang.embedded, lang.mask[:, :9])


def test_deform_conv_runs_fp32_under_autocast():
    torch.manual_seed(0)
    conv = ModulatedDeformConv3x3(4, 4)
    x, offset, mask = torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6)
    expected = conv(x, offset, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, offset, mask)
        half = conv(x.bfloat16(), offset, mask)
    assert out.dtype == torch.float32 and half.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_head_under_bf16_autocast_is_finite_and_close():
    head = _head(_small_cfg(), lang_config=_SMALL_TEXT).eval()
    feats, lang = _small_inputs(1)
    with torch.no_grad():
        ref = head(feats, lang)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = head(feats, lang)
    assert torch.isfinite(low["logits"]).all()
    torch.testing.assert_close(low["logits"].float(), ref["logits"], rtol=0.05, atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    head = _randomize(_head(_small_cfg(), lang_config=_SMALL_TEXT)).eval()
    feats, lang = _small_inputs(2)
    with torch.no_grad():
        ref = head(feats, lang)
        head.cuda()
        out = head([f.cuda() for f in feats], lang.to("cuda"))
    for key in ("logits", "bbox_reg", "centerness"):
        torch.testing.assert_close(out[key].cpu(), ref[key], rtol=1e-3, atol=1e-3)


def test_text_layer_sizes_from_bundled_minilm_config():
    from transformers import BertConfig

    from glip_d2.text.tokenizer import bundled_minilm_path

    text = TextLayerConfig.from_hf(BertConfig.from_pretrained(str(bundled_minilm_path())))
    assert (text.hidden_size, text.num_attention_heads, text.intermediate_size) == (384, 12, 1536)
    assert (text.layer_norm_eps, text.hidden_act) == (1e-12, "gelu")
    assert TextLayerConfig.for_hidden_size(768) == TextLayerConfig()


def test_fusion_in_half_precision_masks_without_overflow():
    # -9e15 does not fit in fp16; the text bias must be built in fp32.
    torch.manual_seed(0)
    block = VLFusionBlock(16, 24, 32, 4).half().eval()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        v, l = block([torch.randn(1, 16, 4, 4).half()], torch.randn(1, 7, 24).half(), mask)
    assert v[0].dtype == l.dtype == torch.float16
    assert torch.isfinite(v[0]).all() and torch.isfinite(l).all()
