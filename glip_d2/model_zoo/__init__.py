"""The released GLIP models: configs and weights, in the style of ``detectron2.model_zoo``."""

from .model_zoo import (
    MODELS,
    ReleasedModel,
    get,
    get_checkpoint_path,
    get_checkpoint_url,
    get_config,
    get_config_file,
)

__all__ = [
    "MODELS",
    "ReleasedModel",
    "get",
    "get_checkpoint_path",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
]
