"""Reassociated fusion attention against the direct (official) product order."""

import pytest
import torch

from glip_d2.modeling.fusion import BiMultiHeadAttention, VLFusionBlock

# GLIP-T's fusion: visual width 256, attention width 2048 in 8 heads; BERT-base text (768) or
# MiniLM (384).
V_DIM, EMBED, HEADS = 256, 2048, 8


def _attention(l_dim, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    attn = BiMultiHeadAttention(V_DIM, l_dim, EMBED, HEADS, dropout=0.1).to(dtype)
    with torch.no_grad():  # non-zero biases, so that every bias term is exercised
        for name, p in attn.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return attn


def _inputs(num_v, lengths, l_dim, dtype, seed=1):
    """A batch whose prompts have different lengths: masks with 1 on each prompt's tokens."""
    g = torch.Generator().manual_seed(seed)
    num_l = max(lengths)
    v = torch.randn(len(lengths), num_v, V_DIM, generator=g, dtype=dtype)
    l = torch.randn(len(lengths), num_l, l_dim, generator=g, dtype=dtype)
    mask = torch.zeros(len(lengths), num_l, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return v.requires_grad_(), l.requires_grad_(), mask


def _run(attn, impl, v, l, mask, seed=7):
    attn.impl = impl
    torch.manual_seed(seed)  # the same dropout masks in both orders
    out_v, out_l = attn(v, l, mask)
    # A loss that weighs every output element differently (positive weights: fp32 sums without
    # cancellation), padded tokens excluded.
    g = torch.Generator().manual_seed(seed)
    weights_v = torch.rand(out_v.shape, generator=g, dtype=out_v.dtype) + 0.5
    loss = (out_v * weights_v).sum() + (out_l.square() * mask[..., None]).sum()
    grads = torch.autograd.grad(loss, [v, l, *attn.parameters()])
    names = ["v", "l"] + [n for n, _ in attn.named_parameters()]
    return out_v.detach(), out_l.detach(), dict(zip(names, grads, strict=True))


def _assert_rel(actual, expected, rel, name, scale=None):
    scale = expected.abs().max().item() if scale is None else scale
    diff = (actual - expected).abs().max().item()
    assert diff <= rel * scale, f"{name}: max abs diff {diff:.3g} > {rel:g} x {scale:.3g}"


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("l_dim,lengths", [(768, (256, 190)), (384, (5, 12, 9))])
def test_reassociated_equals_direct_in_float64(training, l_dim, lengths):
    attn = _attention(l_dim, dtype=torch.float64).train(training)
    v, l, mask = _inputs(80, lengths, l_dim, torch.float64)
    ref_v, ref_l, ref_g = _run(attn, "direct", v, l, mask)
    out_v, out_l, grads = _run(attn, "reassociated", v, l, mask)
    _assert_rel(out_v, ref_v, 1e-12, "visual update")
    _assert_rel(out_l, ref_l, 1e-12, "text update")
    for name, g in grads.items():
        _assert_rel(g, ref_g[name], 1e-11, f"grad {name}")
    if training:  # dropout really acted: the eval-mode result differs
        with torch.no_grad():
            assert not torch.allclose(attn.eval()(v, l, mask)[0], ref_v)


@pytest.mark.parametrize("training", [False, True])
def test_reassociated_equals_direct_in_float32(training):
    attn = _attention(384).train(training)
    v, l, mask = _inputs(400, (40, 23), 384, torch.float32)
    ref_v, ref_l, ref_g = _run(attn, "direct", v, l, mask)
    out_v, out_l, grads = _run(attn, "reassociated", v, l, mask)
    _assert_rel(out_v, ref_v, 1e-5, "visual update")
    _assert_rel(out_l, ref_l, 1e-5, "text update")
    for name, g in grads.items():
        # The key bias shifts every score of a text token alike, so most of its gradient
        # cancels (it is ~1e-3 of the key weight's): compare it on that weight's scale.
        scale = ref_g["l_proj.weight"].abs().max().item() if name == "l_proj.bias" else None
        _assert_rel(g, ref_g[name], 1e-5, f"grad {name}", scale)


def test_automatic_order_counts_multiply_adds():
    # GLIP-T (head width 256 = head_dim): the text-side order is cheaper for any length.
    glip_t = BiMultiHeadAttention(256, 768, 2048, 8)
    assert glip_t.impl == "auto"
    assert glip_t.reassociates(22_000, 256) and glip_t.reassociates(22_000, 4)
    # GLIP-small (width 64, 8 heads of 32): direct N E (C + L) vs N C h L + L C E.
    small = BiMultiHeadAttention(64, 384, 256, 8)
    assert small.reassociates(5000, 32) and not small.reassociates(5000, 256)
    assert not BiMultiHeadAttention(256, 768, 2048, 8, impl="direct").reassociates(10, 1)
    assert BiMultiHeadAttention(64, 384, 256, 8, impl="reassociated").reassociates(10, 256)
    with pytest.raises(ValueError, match="MODEL.GLIP.FUSION_IMPL"):
        BiMultiHeadAttention(64, 384, 256, 8, impl="fast")
    assert VLFusionBlock(16, 24, 32, 4, impl="direct").attn.impl == "direct"


def test_bf16_autocast_keeps_dtypes_and_stays_close():
    attn = _attention(384).eval()
    v, l, mask = _inputs(300, (30, 11), 384, torch.float32)
    with torch.no_grad():
        exact_v, exact_l = attn(v, l, mask)
        results = {}
        for impl in ("direct", "reassociated"):
            attn.impl = impl
            with torch.autocast("cpu", dtype=torch.bfloat16):
                results[impl] = attn(v, l, mask)
    for (low_v, low_l), impl in zip(results.values(), results, strict=True):
        assert low_v.dtype == results["direct"][0].dtype, impl
        assert low_l.dtype == results["direct"][1].dtype, impl
        _assert_rel(low_v.float(), exact_v, 0.05, f"{impl} visual, bf16")
        valid = mask.bool()
        _assert_rel(low_l.float()[valid], exact_l[valid], 0.05, f"{impl} text, bf16")
