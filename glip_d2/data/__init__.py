"""GLIP data: prompts, positive maps, mapper, dataset registrations, mixed loaders."""

from .positive_map import build_positive_map, normalize_positive_map
from .prompts import build_detection_prompt, chunk_phrases, clean_name

__all__ = [
    "build_detection_prompt",
    "build_positive_map",
    "chunk_phrases",
    "clean_name",
    "normalize_positive_map",
]
