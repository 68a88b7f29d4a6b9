"""Data structures shared by glip_d2's parts (like ``detectron2.structures``)."""

from .text_features import TextFeatures

__all__ = ["TextFeatures"]
