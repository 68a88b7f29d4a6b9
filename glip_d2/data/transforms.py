"""Resize with the official GLIP size rule (microsoft/GLIP maskrcnn_benchmark/data/transforms/
transforms.py, ``Resize.get_size``; docs/OFFICIAL_BEHAVIOURS.md, "Resize rule").

Detectron2's :class:`ResizeShortestEdge` rounds both sides to the nearest integer and caps the
long side by rescaling; the official transform instead lowers the target short side to
``int(round(max_size * short / long))`` when needed and *truncates* the long side. The
difference is one pixel in one dimension, which shifts every feature map.
"""

import sys

import numpy as np
from detectron2.data.transforms import NoOpTransform, ResizeShortestEdge, ResizeTransform
from PIL import Image

__all__ = ["GLIPResizeShortestEdge", "glip_resize_shape"]


def glip_resize_shape(height, width, short_edge_length, max_size=None):
    """Output (height, width) of the official resize.

    Args:
        height, width (int): input size.
        short_edge_length (int): target short side before the cap.
        max_size (int | None): cap on the long side; None for no cap.
    Returns:
        tuple[int, int]. Equal to the input when the short side already has the target size.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"glip_resize_shape: image size must be positive, got {height}x{width}")
    size = int(short_edge_length)
    short, long = float(min(height, width)), float(max(height, width))
    if max_size is not None and long / short * size > max_size:
        # Python's round (half to even), as the official code.
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class GLIPResizeShortestEdge(ResizeShortestEdge):
    """:class:`ResizeShortestEdge` with the official size rule; PIL bilinear by default.

    PIL's bilinear filter treats the channels independently, so resizing a BGR array gives the
    same result as the official resize of the RGB image.
    """

    def __init__(
        self, short_edge_length, max_size=sys.maxsize, sample_style="choice", interp=Image.BILINEAR
    ):
        """
        Args:
            short_edge_length (int | list[int]): sizes to choose from ("choice", the official
                multi-scale training) or a [min, max] interval ("range").
            max_size (int | None): cap on the long side (official MAX_SIZE_TRAIN/TEST).
        """
        sizes = [short_edge_length] if isinstance(short_edge_length, int) else short_edge_length
        if len(sizes) == 0 or any(int(s) < 0 for s in sizes):
            raise ValueError(f"short_edge_length must hold sizes >= 0, got {short_edge_length!r}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive or None, got {max_size!r}")
        super().__init__(short_edge_length, max_size, sample_style, interp)

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = glip_resize_shape(h, w, int(size), self.max_size)
        if (newh, neww) == (h, w):
            return NoOpTransform()
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(oldh, oldw, short_edge_length, max_size):
        """Same interface as Detectron2's, with the official rule."""
        return glip_resize_shape(oldh, oldw, short_edge_length, max_size)
