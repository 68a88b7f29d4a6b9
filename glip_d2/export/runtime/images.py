"""Images for the exported graph: the checks, the resize and its size rule of glip_d2's
predictor, in numpy (glip_d2/image_input.py, glip_d2/data/transforms.py and detectron2's
``ResizeTransform``)."""

import math

import numpy as np

__all__ = ["check_image", "glip_resize_shape", "resize_image"]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling


def check_image(image, where="image"):
    """The images GLIPPredictor accepts (glip_d2/image_input.py): (H, W, 3) uint8 or float
    0-255, finite, not a [0, 1]-normalised image. Raises TypeError / ValueError."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: expected a numpy (H, W, 3) array, got {type(image)}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"{where}: expected an (H, W, 3) image array, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(
            f"{where}: dtype {image.dtype} is not accepted (uint8, or float with values 0-255)"
        )
    low, high = float(image.min()), float(image.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{where}: NaN or infinite values; the model needs finite pixels 0-255")
    if low < 0 or high > 255:
        raise ValueError(f"{where}: float values from {low:g} to {high:g} lie outside 0-255")
    if 0 < high <= 1.0:
        raise ValueError(
            f"{where}: every value lies in [0, 1] (max {high:g}), a normalised image; "
            "multiply it by 255 or pass uint8"
        )
    return image


def glip_resize_shape(height, width, short_edge_length, max_size):
    """Output (height, width) of the official resize rule (glip_d2/data/transforms.py)."""
    size = int(short_edge_length)
    short, long = float(min(height, width)), float(max(height, width))
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _pillow_taps(in_size, out_size):
    """Pillow's bilinear taps for one axis (libImaging/Resample.c, ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc``): first input index (out,), int64 fixed-point weights (out, k)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize)
    x = ((xmin[:, None] + taps) - center[:, None] + 0.5) * (1.0 / filterscale)
    weights = np.where(taps < count[:, None], np.maximum(1.0 - np.abs(x), 0.0), 0.0)
    total = np.cumsum(weights, axis=1)[:, -1:]  # sequential sums, as the C loop
    weights = np.where(total != 0, weights / np.where(total != 0, total, 1), weights)
    fixed = np.floor(0.5 + weights * (1 << _PRECISION_BITS)).astype(np.int64)
    return xmin, fixed


def _pillow_pass(image, taps, axis):
    """One 8-bit resampling pass along ``axis`` (0 rows, 1 columns) of an (H, W, C) uint8."""
    xmin, fixed = taps
    size = image.shape[axis]
    acc = np.full(image.shape[:axis] + (len(xmin),) + image.shape[axis + 1 :], 1 << 21, np.int64)
    shape = [1, 1, 1]
    shape[axis] = len(xmin)
    for t in range(fixed.shape[1]):
        rows = np.take(image, np.minimum(xmin + t, size - 1), axis=axis).astype(np.int64)
        acc += rows * fixed[:, t].reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _torch_bilinear_taps(in_size, out_size, dtype):
    """torch's bilinear source indices and weights (align_corners=False, no antialias)."""
    if in_size == out_size:
        index = np.arange(out_size)
        return index, index, np.ones(out_size, dtype), np.zeros(out_size, dtype)
    scale = dtype(in_size) / dtype(out_size)
    # scale * (i + 0.5) - 0.5 with one rounding (torch's kernel compiles it to a fused
    # multiply-add): exact in float64, then rounded to the compute type.
    index = (np.arange(out_size, dtype=dtype) + dtype(0.5)).astype(np.float64)
    src = (np.float64(scale) * index - 0.5).astype(dtype)
    src = np.maximum(src, dtype(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(dtype), 0, 1).astype(dtype)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (dtype(1) - lam).astype(dtype), lam


def resize_image(image, out_h, out_w):
    """detectron2's ``ResizeTransform.apply_image`` with bilinear interpolation: Pillow's
    filter for uint8 (exactly), ``F.interpolate(..., align_corners=False)`` for floats."""
    h, w = image.shape[:2]
    if image.dtype == np.uint8:
        out = image
        if out_w != w:
            out = _pillow_pass(out, _pillow_taps(w, out_w), axis=1)
        if out_h != h:
            out = _pillow_pass(out, _pillow_taps(h, out_h), axis=0)
        return out
    dtype = np.float64 if image.dtype == np.float64 else np.float32  # torch's opmath type
    y0, y1, hy0, hy1 = _torch_bilinear_taps(h, out_h, dtype)
    x0, x1, wx0, wx1 = _torch_bilinear_taps(w, out_w, dtype)
    img = image.astype(dtype)
    terms = [(y0, x0, hy0[:, None] * wx0), (y0, x1, hy0[:, None] * wx1)]
    terms += [(y1, x0, hy1[:, None] * wx0), (y1, x1, hy1[:, None] * wx1)]
    out = sum(img[ys][:, xs] * weight[..., None] for ys, xs, weight in terms)
    return out.astype(image.dtype)
