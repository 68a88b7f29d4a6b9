"""GLIP data: prompts, positive maps, mapper, dataset registrations, mixed loaders."""

from . import datasets  # noqa: F401  registers the predefined datasets
from .build import build_grounding_train_loader, get_grounding_dataset_dicts
from .mapper import GroundingDatasetMapper
from .positive_map import build_positive_map, normalize_positive_map
from .prompts import TrainingPromptSampler, build_detection_prompt, chunk_phrases, clean_name
from .synthetic import ensure_glip_synth

__all__ = [
    "GroundingDatasetMapper",
    "TrainingPromptSampler",
    "build_detection_prompt",
    "build_grounding_train_loader",
    "build_positive_map",
    "chunk_phrases",
    "clean_name",
    "ensure_glip_synth",
    "get_grounding_dataset_dicts",
    "normalize_positive_map",
]
