"""GLIP data: the mapper, resize transforms, dataset registrations, mixed loaders.

Prompts, spans and positive maps live in :mod:`glip_d2.text`.
"""

from . import datasets  # noqa: F401  registers the predefined datasets
from .build import build_grounding_train_loader, get_grounding_dataset_dicts
from .mapper import GroundingDatasetMapper
from .synthetic import ensure_glip_synth

__all__ = [
    "GroundingDatasetMapper",
    "build_grounding_train_loader",
    "ensure_glip_synth",
    "get_grounding_dataset_dicts",
]
