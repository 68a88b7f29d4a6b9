"""The model's own check of its input images: every pixel finite.

One NaN or Inf pixel spreads through the backbone into the offsets of the deformable
convolutions (``torchvision.ops.deform_conv2d``), where it ends the process with a segmentation
fault instead of a Python error. The check runs where images enter the model
(``GLIPDetector.preprocess_image``), in training and at inference.
"""

import torch

__all__ = ["check_finite_images", "describe_image"]


def describe_image(index, inputs):
    """``"image 3 ('a.jpg', image_id=7)"``: the batch index plus what the input dict knows."""
    known = []
    if inputs.get("file_name") is not None:
        known.append(repr(inputs["file_name"]))
    if inputs.get("image_id") is not None:
        known.append(f"image_id={inputs['image_id']}")
    return f"image {index}" + (f" ({', '.join(known)})" if known else "")


def check_finite_images(batched_inputs):
    """Raise when an input image holds a NaN or infinite value.

    Integer images (the mapper's uint8) cannot hold one and are not looked at; floating ones
    cost one ``isfinite`` pass each and a single host sync for the whole batch.

    Args:
        batched_inputs (list[dict]): the model's input dicts (``image`` (3, H, W) tensors).
    Raises:
        ValueError: naming the first bad image (batch index, ``file_name``, ``image_id``)
            and how many of its values are not finite.
    """
    floating = [
        (i, x["image"])
        for i, x in enumerate(batched_inputs)
        if torch.is_tensor(x.get("image")) and x["image"].is_floating_point()
    ]
    if not floating:
        return
    finite = torch.stack([torch.isfinite(img).all() for _, img in floating])
    if bool(finite.all()):
        return
    i, img = floating[int((~finite).nonzero()[0, 0])]
    bad = int((~torch.isfinite(img)).sum())
    raise ValueError(
        f"{describe_image(i, batched_inputs[i])}: {bad} of its {img.numel()} pixel values are "
        "NaN or infinite; images must hold finite BGR values (0-255)"
    )
