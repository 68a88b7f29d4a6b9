"""Official GLIP checkpoints: key mapping both ways, safe reading, ``GLIPCheckpointer``."""

from .checkpointer import (
    CheckpointMismatchError,
    GLIPCheckpointer,
    NonFiniteCheckpointError,
    find_nonfinite_tensor,
)
from .io import (
    describe_checkpoint,
    holds_text_encoder,
    is_official_state_dict,
    load_checkpoint_file,
    select_official_state_dict,
    use_text_encoder_from_weights,
)
from .official import (
    DROPPED_OFFICIAL_KEYS,
    TEXT_ENCODER_PREFIX,
    convert_official_state_dict,
    glip_d2_to_official,
    glip_d2_to_official_key,
    official_cell_anchors,
    official_to_glip_d2_key,
    strip_module_prefix,
    swin_relative_position_index,
)
from .prompt_embedding import PromptEmbedding, load_prompt_embedding, save_prompt_embedding

__all__ = [
    "CheckpointMismatchError",
    "DROPPED_OFFICIAL_KEYS",
    "GLIPCheckpointer",
    "NonFiniteCheckpointError",
    "PromptEmbedding",
    "TEXT_ENCODER_PREFIX",
    "convert_official_state_dict",
    "describe_checkpoint",
    "find_nonfinite_tensor",
    "glip_d2_to_official",
    "glip_d2_to_official_key",
    "holds_text_encoder",
    "is_official_state_dict",
    "load_checkpoint_file",
    "load_prompt_embedding",
    "official_cell_anchors",
    "official_to_glip_d2_key",
    "save_prompt_embedding",
    "select_official_state_dict",
    "strip_module_prefix",
    "swin_relative_position_index",
    "use_text_encoder_from_weights",
]
