"""The fast modulated deformable conv against torchvision's ``deform_conv2d`` (the reference)."""

import warnings

import pytest
import torch
from torchvision.ops import deform_conv2d

from glip_d2.modeling.deform_conv import modulated_deform_conv3x3
from glip_d2.modeling.dyconv import DyConv, ModulatedDeformConv3x3

# GLIP-T's width at small spatial sizes: each level ceil-halves the previous one.
GLIP_T_LIKE_LEVELS = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]


def _inputs(batch, channels, height, width, stride, spread, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    x = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    # Offsets of a few pixels send many taps across the border and some wholly outside.
    offset = spread * torch.randn(batch, 18, out_h, out_w, generator=g, dtype=dtype)
    mask = torch.rand(batch, 9, out_h, out_w, generator=g, dtype=dtype)
    weight = torch.randn(5, channels, 3, 3, generator=g, dtype=dtype)
    bias = torch.randn(5, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)]


def _reference(x, offset, mask, weight, bias, stride):
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)


@pytest.mark.parametrize(
    "batch,size,stride,spread",
    [
        (2, (7, 9), 1, 2.5),
        (2, (9, 12), 2, 2.5),
        (1, (5, 4), 1, 6.0),
        (3, (1, 1), 1, 0.7),
        (2, (2, 3), 2, 1.5),
    ],
)
def test_forward_and_gradients_equal_torchvision(batch, size, stride, spread):
    # float64: positions are non-integer almost surely, and differences are rounding only.
    inputs = _inputs(batch, 6, *size, stride, spread, torch.float64)
    expected = _reference(*inputs, stride)
    actual = modulated_deform_conv3x3(*inputs, stride=stride)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(expected)
    names = ("input", "offset", "mask", "weight", "bias")
    grads_ref = torch.autograd.grad(expected, inputs, upstream)
    grads = torch.autograd.grad(actual, inputs, upstream)
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=name)
    if spread > 2:  # the case really samples outside the image
        y = inputs[1].detach()[:, 0::2]
        assert ((y <= -2) | (y >= size[0] + 1)).any()


def test_float32_module_equals_torchvision_module():
    torch.manual_seed(0)
    fast = ModulatedDeformConv3x3(16, 8, stride=2)
    reference = ModulatedDeformConv3x3(16, 8, stride=2, impl="torchvision")
    reference.load_state_dict(fast.state_dict())
    with torch.no_grad():
        fast.bias.normal_()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 11, 14)
    offset, mask = 3 * torch.randn(2, 18, 6, 7), torch.rand(2, 9, 6, 7)
    expected = reference(x, offset, mask)
    torch.testing.assert_close(fast(x, offset, mask), expected, rtol=1e-5, atol=1e-5)


def _randomized_dyconv(impl, seed=0, name="DyConv"):
    torch.manual_seed(seed)
    layer = DyConv(256, 256, deform_conv_impl=impl, name=name)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
        # Offsets of about a pixel and masks well away from 0 and 1.
        layer.offset.weight.mul_(0.5)
    return layer


def test_dyconv_with_coarse_offset_quirk_equals_torchvision():
    reference = _randomized_dyconv("torchvision")
    fast = _randomized_dyconv("fast")
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, 256, h, w, generator=g) for h, w in GLIP_T_LIKE_LEVELS]
    with torch.no_grad():
        offsets = reference.offset(feats[0])[:, :18]
        assert 0.3 < offsets.abs().mean() < 3  # the offsets really deform
        expected = reference(feats)
        actual = fast(feats)
    for level, (a, b) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == b.shape == (1, 256, *GLIP_T_LIKE_LEVELS[level])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_non_finite_offsets_raise_an_error_naming_the_layer():
    head_layer = _randomized_dyconv("torchvision", name="head.tower.3.dyconv")
    feats = [torch.randn(1, 256, h, w) for h, w in GLIP_T_LIKE_LEVELS]
    feats[2][0, 5, 1, 1] = float("nan")
    with pytest.raises(
        FloatingPointError,
        match=r"head\.tower\.3\.dyconv\.DyConv\.1\.conv.*"
        r"level 2 of 5",
    ) as info:
        head_layer(feats)
    assert "input features are not finite either" in str(info.value)

    conv = ModulatedDeformConv3x3(4, 4)
    offset = torch.zeros(1, 18, 3, 3)
    offset[0, 4, 1, 2] = float("inf")
    with pytest.raises(FloatingPointError, match="ModulatedDeformConv3x3: non-finite"):
        conv(torch.randn(1, 4, 3, 3), offset, torch.ones(1, 9, 3, 3))


def test_model_reads_the_fast_op_keys_and_names_its_convs():
    from conftest import reference_cfg
    from detectron2.modeling import build_model

    defaults = reference_cfg().MODEL.GLIP
    assert (defaults.DEFORM_CONV_IMPL, defaults.DEFORM_CONV_LOW_PRECISION) == ("fast", True)
    assert defaults.FUSION_IMPL == "auto"
    cfg = reference_cfg()
    # Smaller and without reading the text encoder's weights: only the wiring is checked.
    cfg.MODEL.GLIP.FUSION_EMBED_DIM = 64
    cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    cfg.MODEL.GLIP.DEFORM_CONV_IMPL = "torchvision"
    cfg.MODEL.GLIP.DEFORM_CONV_LOW_PRECISION = False
    cfg.MODEL.GLIP.FUSION_IMPL = "direct"
    head = build_model(cfg).head
    conv = head.tower[1].dyconv.DyConv[2].conv
    assert (conv.name, conv.impl, conv.low_precision) == (
        "head.tower.1.dyconv.DyConv.2.conv",
        "torchvision",
        False,
    )
    assert head.tower[0].fusion.attn.impl == "direct"
    with pytest.raises(ValueError, match="MODEL.GLIP.DEFORM_CONV_IMPL"):
        ModulatedDeformConv3x3(4, 4, impl="cuda")


def test_bf16_autocast_runs_samples_and_product_in_bf16():
    torch.manual_seed(0)
    conv = ModulatedDeformConv3x3(32, 16, low_precision=True)
    x, offset, mask = torch.randn(1, 32, 9, 9), 2 * torch.randn(1, 18, 9, 9), torch.rand(1, 9, 9, 9)
    expected = conv(x, offset, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(x, offset, mask)
    assert expected.dtype == torch.float32 and low.dtype == torch.bfloat16
    # The same as the functional op in bf16 (positions fp32), and close to fp32.
    direct = modulated_deform_conv3x3(
        x, offset, mask, conv.weight, conv.bias, compute_dtype=torch.bfloat16
    )
    torch.testing.assert_close(low, direct, rtol=0, atol=0)
    diff = (low.float() - expected).abs().max().item()
    assert 0 < diff < 0.02 * expected.abs().max().item()


def test_onnx_export_matches_torchvision(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    conv = ModulatedDeformConv3x3(8, 4, stride=2).eval()
    x, offset, mask = torch.randn(1, 8, 9, 7), 2 * torch.randn(1, 18, 5, 4), torch.rand(1, 9, 5, 4)
    path = tmp_path / "deform_conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation notes
        torch.onnx.export(conv, (x, offset, mask), str(path), dynamo=False, opset_version=17)
    session = onnxruntime.InferenceSession(str(path))
    feeds = {
        i.name: t.numpy() for i, t in zip(session.get_inputs(), (x, offset, mask), strict=True)
    }
    (out,) = session.run(None, feeds)
    expected = _reference(x, offset, mask, conv.weight, conv.bias, 2).detach()
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)
