"""Retrieval record -> model input: the image only, resized as at test time (captions are read
from the records by the retrieval evaluation, not by the model's forward)."""

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .mapper import read_record_image
from .transforms import GLIPResizeShortestEdge

__all__ = ["RetrievalImageMapper"]


class RetrievalImageMapper:
    """Reads a retrieval record's image: ``{"image" (3, H, W) uint8, "height", "width",
    "image_id", "index"}`` where ``index`` is the record's position in the dataset list."""

    @configurable
    def __init__(self, *, augmentations, image_format="BGR"):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        return {
            "augmentations": [
                GLIPResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
            ],
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, record):
        image = read_record_image(record, self.image_format)
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = aug_input.image
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": record.get("height", height),
            "width": record.get("width", width),
            "image_id": record.get("image_id"),
            "index": record["index"],
        }
