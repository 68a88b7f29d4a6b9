"""Data structures and box geometry shared by glip_d2's parts (like ``detectron2.structures``)."""

from .legacy_boxes import (
    box_area_legacy,
    boxes_from_centers_and_sizes,
    centers_and_sizes,
    clip_boxes_legacy,
    flip_boxes_legacy,
    legacy_cell_anchors,
    legacy_xyxy_to_xywh,
    nms_legacy,
    nonempty_legacy,
    pairwise_iou_legacy,
    xywh_to_legacy_xyxy,
)
from .text_features import TextFeatures

__all__ = [
    "TextFeatures",
    "box_area_legacy",
    "boxes_from_centers_and_sizes",
    "centers_and_sizes",
    "clip_boxes_legacy",
    "flip_boxes_legacy",
    "legacy_cell_anchors",
    "legacy_xyxy_to_xywh",
    "nms_legacy",
    "nonempty_legacy",
    "pairwise_iou_legacy",
    "xywh_to_legacy_xyxy",
]
