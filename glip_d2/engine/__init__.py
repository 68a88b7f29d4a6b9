"""Training: the GLIP trainer, optimizer/param groups, EMA, the step loop; caption retrieval
evaluation."""

from .ema import EMAHook, ModelEMA
from .optimizer import (
    apply_tuning_mode,
    build_glip_optimizer,
    glip_optimizer_params,
    maybe_add_full_model_gradient_clipping,
)
from .retrieval import evaluate_retrieval, is_retrieval_set
from .train_loop import GLIPAMPTrainer, GLIPSimpleTrainer, NonFiniteLossGuard, build_train_loop
from .trainer import GLIPTrainer, evaluate_checkpoint, setup_cfg

__all__ = [
    "EMAHook",
    "GLIPAMPTrainer",
    "GLIPSimpleTrainer",
    "GLIPTrainer",
    "ModelEMA",
    "NonFiniteLossGuard",
    "apply_tuning_mode",
    "build_glip_optimizer",
    "build_train_loop",
    "evaluate_checkpoint",
    "evaluate_retrieval",
    "glip_optimizer_params",
    "is_retrieval_set",
    "maybe_add_full_model_gradient_clipping",
    "setup_cfg",
]
