"""Training: the GLIP trainer, optimizer/param groups, EMA, the step loop; caption retrieval
evaluation."""

from .ema import EMAHook, ModelEMA
from .inference import CachedPromptInference
from .optimizer import (
    apply_tuning_mode,
    build_glip_optimizer,
    glip_optimizer_params,
    maybe_add_full_model_gradient_clipping,
)
from .prompt_tuning import PromptEmbeddingSaver, maybe_load_prompt_embedding, tuned_prompt
from .retrieval import evaluate_retrieval, is_retrieval_set
from .train_loop import GLIPAMPTrainer, GLIPSimpleTrainer, NonFiniteLossGuard, build_train_loop
from .trainer import GLIPTrainer, evaluate_checkpoint, setup_cfg

__all__ = [
    "CachedPromptInference",
    "EMAHook",
    "GLIPAMPTrainer",
    "GLIPSimpleTrainer",
    "GLIPTrainer",
    "ModelEMA",
    "NonFiniteLossGuard",
    "PromptEmbeddingSaver",
    "apply_tuning_mode",
    "build_glip_optimizer",
    "build_train_loop",
    "evaluate_checkpoint",
    "evaluate_retrieval",
    "glip_optimizer_params",
    "is_retrieval_set",
    "maybe_add_full_model_gradient_clipping",
    "maybe_load_prompt_embedding",
    "setup_cfg",
    "tuned_prompt",
]
