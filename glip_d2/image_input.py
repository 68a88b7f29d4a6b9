"""The images :class:`~glip_d2.predictor.GLIPPredictor` accepts, checked before anything else.

Accepted: a numpy array (H, W, 3) in ``cfg.INPUT.FORMAT`` channel order, either ``uint8``
(what ``cv2.imread`` and Detectron2's ``DefaultPredictor`` take) or floating point (``float16``,
``float32``, ``float64``) with values in 0-255. Refused, each with a message that says how to
pass the image instead:

* other shapes: grey (H, W) or (H, W, 1), RGBA (H, W, 4), CHW layouts, batches;
* other dtypes: ``uint16`` (16-bit files), ``bool`` masks, other integers;
* torch tensors and PIL images (the layout and channel order would be guesses);
* NaN or infinite values;
* float values outside 0-255, and float images whose values all lie in [0, 1] (not all
  zero): almost certainly a normalised image, which the model would see as nearly black.
"""

import numpy as np

__all__ = ["check_image_array"]

_FLOATS = (np.float16, np.float32, np.float64)


def _shape_error(where, shape):
    if 0 in shape:
        hint = "the image is empty"
    elif len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        hint = "a grey image: repeat it to 3 channels, e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)"
    elif len(shape) == 3 and shape[2] == 4:
        hint = "4 channels (alpha?): drop the alpha channel, e.g. img[:, :, :3]"
    elif len(shape) == 3 and shape[0] in (1, 3, 4):
        hint = "a (C, H, W) layout: transpose it, e.g. img.transpose(1, 2, 0)"
    elif len(shape) == 4:
        hint = "a batch: pass one image at a time (predict_batch takes a list)"
    else:
        hint = "the colour channels (3) must be the last axis"
    return ValueError(f"{where}: expected an (H, W, 3) image array, got shape {shape}: {hint}")


def check_image_array(image, where="image 0"):
    """Check one predictor input; return it unchanged.

    Args:
        image: the candidate image.
        where (str): names the image in error messages (``"image 2"`` in a batch).
    Returns:
        np.ndarray: ``image``.
    Raises:
        TypeError: not a numpy array, or a dtype other than uint8 / float.
        ValueError: a shape other than (H, W, 3), non-finite values, float values outside
            0-255 or all in [0, 1].
    """
    if not isinstance(image, np.ndarray):
        if type(image).__module__.startswith("torch"):
            hint = (
                "convert it to an (H, W, 3) array, e.g. t.permute(1, 2, 0).cpu().numpy() for a "
                "(3, H, W) tensor"
            )
        elif type(image).__module__.startswith("PIL"):
            hint = "np.asarray(img) gives RGB: build the predictor with INPUT.FORMAT 'RGB'"
        else:
            hint = "read files with glip_d2.predictor.read_image or cv2.imread"
        raise TypeError(f"{where}: expected a numpy (H, W, 3) array, got {type(image)}; {hint}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise _shape_error(where, tuple(image.shape))
    if image.dtype == np.uint8:
        return image
    if image.dtype not in _FLOATS:
        if image.dtype == np.uint16:
            hint = "scale a 16-bit image to 8 bits, e.g. (img // 257).astype(np.uint8)"
        elif image.dtype == np.bool_:
            hint = "a bool mask is not an image; for a 0/255 picture use img.astype(np.uint8) * 255"
        else:
            hint = "convert 0-255 values with img.astype(np.uint8)"
        raise TypeError(f"{where}: dtype {image.dtype} is not accepted (uint8 or float); {hint}")
    # Two reductions find NaN/Inf as well as the range: NaN propagates through min and max.
    low, high = float(image.min()), float(image.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = np.argwhere(~np.isfinite(image))
        row, col, channel = (int(v) for v in bad[0])
        raise ValueError(
            f"{where}: {len(bad)} NaN or infinite values, the first at row {row}, column {col}, "
            f"channel {channel}; the model needs finite pixel values (0-255)"
        )
    if low < 0 or high > 255:
        raise ValueError(
            f"{where}: float values from {low:g} to {high:g} lie outside 0-255; pass raw pixel "
            "values (not mean/std-normalised ones), as uint8 or float 0-255"
        )
    if high <= 1.0 and high > 0:
        raise ValueError(
            f"{where}: every value lies in [0, 1] (max {high:g}): this looks like a normalised "
            "image, which the model would see as nearly black; multiply it by 255 or pass a "
            "uint8 array"
        )
    return image
