"""GLIP data: the mapper, resize transforms, dataset registrations, mixed loaders.

Prompts, spans and positive maps live in :mod:`glip_d2.text`.
"""

from . import datasets  # noqa: F401  registers the predefined datasets
from .build import build_grounding_train_loader, get_grounding_dataset_dicts
from .mapper import GroundingDatasetMapper

__all__ = [
    "GroundingDatasetMapper",
    "build_grounding_train_loader",
    "get_grounding_dataset_dicts",
]
