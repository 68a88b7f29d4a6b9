"""Modulated deformable 3x3 convolution as a gather of the 9 taps followed by one matrix product.

The result is the one of ``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride,
padding=1, mask=mask)``, the op that stands in for the official CUDA kernel (microsoft/GLIP
maskrcnn_benchmark/layers/deform_conv.py, ModulatedDeformConv): for output location (h, w) and
kernel tap t = 3 i + j the input is sampled at

    y = h * stride - 1 + i + offset[:, 2 t],    x = w * stride - 1 + j + offset[:, 2 t + 1]

bilinearly, each of the four corners reading 0 outside the image (a position with y <= -1,
y >= H, x <= -1 or x >= W reads 0 as a whole), times ``mask[:, t]``; the output is the weight
applied to these samples, plus the bias.

torchvision's CPU kernel interleaves that sampling with its matrix product and runs at a
fraction of the machine's GEMM speed. Here the bilinear weights and corner indices are computed
once per (location, tap) in fp32 and shared by all channels: the input is copied channels-last
with a one-pixel zero border (so every corner of a position that reads anything is a row of
that table), ``F.embedding_bag`` forms the weighted sum of the 4 corner rows of every (location,
tap) in one pass, and one matrix product with the (C_out, 9 C_in) weight does the rest.
Positions, indices and bilinear weights always stay fp32; the table, the samples and the
matrix product may run in bf16/fp16 (``compute_dtype``).
"""

import torch
import torch.nn.functional as F

__all__ = ["modulated_deform_conv3x3", "deform_conv_output_size"]


def deform_conv_output_size(size, stride):
    """Output length of a 3x3 conv with padding 1 along a dimension of ``size``."""
    return (size - 1) // stride + 1


def _base_positions(out_h, out_w, stride, device):
    """(out_h, out_w, 9, 2) fp32 undeformed (y, x) sampling positions, taps row-major."""
    rows = torch.arange(out_h, device=device, dtype=torch.float32) * stride - 1
    cols = torch.arange(out_w, device=device, dtype=torch.float32) * stride - 1
    taps = torch.arange(3, device=device, dtype=torch.float32)
    tap_y = taps.repeat_interleave(3)  # i of tap t = 3 i + j
    tap_x = taps.repeat(3)  # j
    y = rows[:, None, None] + tap_y  # (out_h, 1, 9)
    x = cols[None, :, None] + tap_x  # (1, out_w, 9)
    return torch.stack(torch.broadcast_tensors(y, x), dim=-1)


def _corner_indices_and_weights(offset, mask, height, width, stride):
    """Rows of the bordered table and bilinear-times-mask weights, one bag per (b, location, tap).

    Args:
        offset (Tensor): (B, 18, H_out, W_out), (dy, dx) per tap.
        mask (Tensor): (B, 9, H_out, W_out).
        height, width (int): input size.
    Returns:
        (Tensor, Tensor): indices (B*H_out*W_out*9, 4) int64 into the (B*(H+2)*(W+2), C)
        table, and weights (B*H_out*W_out*9, 4) in fp32 (fp64 for fp64 offsets), in
        (b, h, w, tap) order.
    """
    b, _, out_h, out_w = offset.shape
    # (B, H_out, W_out, 9, 2) absolute positions in at least fp32, whatever the offsets' dtype.
    dtype = torch.promote_types(offset.dtype, torch.float32)
    pos = offset.to(dtype).view(b, 9, 2, out_h, out_w).permute(0, 3, 4, 1, 2)
    pos = pos + _base_positions(out_h, out_w, stride, offset.device).to(dtype)
    modulation = mask.to(dtype).view(b, 9, out_h, out_w).permute(0, 2, 3, 1)
    y, x = pos.unbind(-1)
    # A position outside (-1, H) x (-1, W) reads 0 as a whole (torchvision's early return);
    # inside it, corners off the image land on the table's zero border.
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    modulation = modulation * inside
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    # Clamped so that positions outside (weight 0 above) still index the table.
    y0 = y0.clamp(-1, height - 1).long() + 1
    x0 = x0.clamp(-1, width - 1).long() + 1
    row = width + 2
    image = torch.arange(b, device=offset.device).view(b, 1, 1, 1) * ((height + 2) * row)
    top_left = image + y0 * row + x0
    indices = torch.stack((top_left, top_left + 1, top_left + row, top_left + row + 1), dim=-1)
    weights = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), dim=-1) * modulation[..., None]
    return indices.view(-1, 4), weights.view(-1, 4)


def _bordered_table(x, dtype):
    """(B*(H+2)*(W+2), C) channels-last copy of ``x`` with a zero border, in ``dtype``."""
    b, c, h, w = x.shape
    table = x.new_zeros((b, h + 2, w + 2, c), dtype=dtype)
    table[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    return table.view(-1, c)


def _sample(table, indices, weights):
    """Weighted sum of 4 table rows per bag: (num_bags, C)."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        # embedding_bag has no direct ONNX counterpart: the same sum through plain gathers.
        corners = F.embedding(indices, table)  # (num_bags, 4, C)
        return (corners * weights[..., None]).sum(dim=1)
    return F.embedding_bag(indices, table, mode="sum", per_sample_weights=weights)


def modulated_deform_conv3x3(x, offset, mask, weight, bias=None, stride=1, compute_dtype=None):
    """Modulated deformable 3x3 conv, padding 1 (torchvision's ``deform_conv2d`` semantics).

    Args:
        x (Tensor): (B, C_in, H, W).
        offset (Tensor): (B, 18, H_out, W_out), (dy, dx) per tap, taps in row-major order.
        mask (Tensor): (B, 9, H_out, W_out) modulation.
        weight (Tensor): (C_out, C_in, 3, 3).
        bias (Tensor or None): (C_out,).
        stride (int): 1 or 2 (any positive stride works).
        compute_dtype (torch.dtype or None): dtype of the samples and the matrix product
            (default: ``x``'s). Sampling positions and bilinear weights are always fp32.
    Returns:
        Tensor: (B, C_out, H_out, W_out) in ``compute_dtype``.
    """
    b, c, h, w = x.shape
    out_h, out_w = deform_conv_output_size(h, stride), deform_conv_output_size(w, stride)
    if offset.shape != (b, 18, out_h, out_w) or mask.shape != (b, 9, out_h, out_w):
        raise ValueError(
            f"deformable 3x3 conv with stride {stride} on input {tuple(x.shape)} expects offset "
            f"{(b, 18, out_h, out_w)} and mask {(b, 9, out_h, out_w)}, got "
            f"{tuple(offset.shape)} and {tuple(mask.shape)}"
        )
    if weight.shape[1:] != (c, 3, 3):
        raise ValueError(f"weight {tuple(weight.shape)} does not fit {c} input channels (3x3)")
    dtype = compute_dtype or x.dtype
    indices, weights = _corner_indices_and_weights(offset, mask, h, w, stride)
    samples = _sample(_bordered_table(x, dtype), indices, weights.to(dtype))
    samples = samples.view(b, out_h * out_w, 9 * c)  # (tap, channel) per location
    # Weight columns reordered tap-major to match: (B, P, 9 C) @ (9 C, C_out), then NCHW. One
    # product over all images (a per-image loop would copy the samples' gradient in backward).
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * c).to(dtype)
    out = F.linear(samples, kernel, None if bias is None else bias.to(dtype))
    out = out.transpose(1, 2).contiguous()
    return out.view(b, -1, out_h, out_w)
