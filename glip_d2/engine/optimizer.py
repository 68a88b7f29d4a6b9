"""GLIP's optimizer: parameter groups, tuning modes and whole-model gradient clipping.

Official recipe (microsoft/GLIP maskrcnn_benchmark/solver/build.py, ``make_optimizer``): AdamW,
``language_backbone.*`` at ``SOLVER.GLIP.LANG_LR``, biases at ``BIAS_LR_FACTOR`` x their lr
with ``WEIGHT_DECAY_BIAS``, norms without weight decay, and one L2 clip over the gradients of
the whole model.
"""

import logging
import types

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = [
    "LINEAR_PROBE_KEYWORDS",
    "apply_tuning_mode",
    "build_glip_optimizer",
    "glip_optimizer_params",
    "maybe_add_full_model_gradient_clipping",
]

logger = logging.getLogger(__name__)

LANGUAGE_PREFIX = "language_backbone."
PROMPT_PARAM = "language_backbone.tunable_linear.weight"
# Parameter-name fragments that stay trainable in the linear probe (microsoft/GLIP
# tools/finetune.py, tuning_highlevel_override "linear_prob"; its cls_logits and cosine_scale
# name parameters glip_d2's head does not have).
LINEAR_PROBE_KEYWORDS = (
    "bbox_pred",
    "centerness",
    "dot_product_projection_text",
    "head.log_scale",
    "head.bias_lang",
    "head.bias0",
)
TUNING_MODES = ("full", "linear_prob", "prompt")


def _keep_eval(module):
    """Pin ``module`` (and its children) to eval mode, whatever ``.train()`` later asks.

    Frozen parts must not run dropout / drop-path / DropBlock (official: frozen parts are put in
    eval mode), but D2's trainer and ``inference_on_dataset`` call ``model.train()`` on the
    whole model, so the frozen submodule's ``train`` is replaced by one that always means eval.
    """

    def train(self, mode=True):
        return torch.nn.Module.train(self, False)

    module.train = types.MethodType(train, module)
    module.eval()


def apply_tuning_mode(cfg, model):
    """Freeze the parameters that ``SOLVER.GLIP.TUNING`` does not train (microsoft/GLIP
    tools/finetune.py, ``tuning_highlevel_override``).

    ``full`` leaves the model as built (its own freezes such as ``MODEL.SWIN.FREEZE_AT`` stay);
    ``linear_prob`` trains only the prediction layers listed in :data:`LINEAR_PROBE_KEYWORDS`;
    ``prompt`` trains only the tunable linear table (needs
    ``MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR``). Submodules left without any trainable parameter
    are pinned to eval mode. Returns the names of the trainable parameters.
    """
    mode = cfg.SOLVER.GLIP.TUNING
    if mode not in TUNING_MODES:
        raise ValueError(f"SOLVER.GLIP.TUNING={mode!r} is not one of {TUNING_MODES}")
    names = [n for n, _ in model.named_parameters()]
    if mode == "linear_prob":
        keep = {n for n in names if any(k in n for k in LINEAR_PROBE_KEYWORDS)}
    elif mode == "prompt":
        if PROMPT_PARAM not in names:
            raise ValueError(
                "SOLVER.GLIP.TUNING='prompt' trains only the tunable linear table, but the model "
                f"has no parameter {PROMPT_PARAM!r}: set "
                "MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR True"
            )
        keep = {PROMPT_PARAM}
    else:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    if not keep:
        raise ValueError(f"SOLVER.GLIP.TUNING={mode!r} matches no parameter of the model")
    for name, param in model.named_parameters():
        if name not in keep:
            param.requires_grad_(False)
    _pin_frozen_modules(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    logger.info(f"Tuning mode {mode!r}: {len(trainable)} trainable parameter tensors")
    return trainable


def _pin_frozen_modules(module):
    """Pin every maximal submodule whose parameters are all frozen to eval mode."""
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            _keep_eval(child)
        else:
            _pin_frozen_modules(child)


def glip_optimizer_params(cfg, model):
    """Parameter groups: LANG_LR for the text encoder, bias lr/decay, no decay on norms.

    Built with D2's :func:`get_default_optimizer_params`; the lr of a parameter is
    ``BASE_LR x (LANG_LR / BASE_LR if language) x (BIAS_LR_FACTOR if bias)`` as in the official
    ``make_optimizer`` (language biases get ``2 x LANG_LR``); the prompt-tuning table is not a
    language parameter there. The head's fusion blocks and text layers also get
    ``SOLVER.GLIP.FUSION_LR_FACTOR`` (1 officially).
    """
    base_lr = cfg.SOLVER.BASE_LR
    if base_lr <= 0:
        raise ValueError(f"SOLVER.BASE_LR must be > 0, got {base_lr}")
    lang_factor = cfg.SOLVER.GLIP.LANG_LR / base_lr
    bias_factor = cfg.SOLVER.BIAS_LR_FACTOR
    fusion_factor = cfg.SOLVER.GLIP.FUSION_LR_FACTOR
    if fusion_factor <= 0:
        raise ValueError(f"SOLVER.GLIP.FUSION_LR_FACTOR must be > 0, got {fusion_factor}")

    def lr_factor(name):
        # The prompt-tuning table sits in the official RPN (rpn.tunable_linear), outside the
        # language backbone's LANG_LR group: it trains at BASE_LR (0.05 in prompt tuning).
        is_language = name.startswith(LANGUAGE_PREFIX) and name != PROMPT_PARAM
        factor = lang_factor if is_language else 1.0
        if name.startswith("head.") and (".fusion." in name or ".text_layer." in name):
            factor *= fusion_factor
        if name.endswith(".bias"):
            factor *= bias_factor
        return factor

    return get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=1.0,  # folded into lr_factor so that it stacks with LANG_LR
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=lr_factor,
    )


def maybe_add_full_model_gradient_clipping(cfg, optim_cls):
    """Wrap ``optim_cls`` so that ``step`` first clips the L2 norm of all gradients together.

    D2's own clipping (CLIP_TYPE "value"/"norm") clips each parameter separately; GLIP clips
    the gradient of the whole model at once (CLIP_TYPE "full_model").
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return optim_cls
    max_norm, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE

    class FullModelGradientClipping(optim_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optim_cls.__name__}WithFullModelGradientClip"
    return FullModelGradientClipping


def build_glip_optimizer(cfg, model):
    """AdamW (or SGD) over :func:`glip_optimizer_params`, with the configured clipping."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    params = glip_optimizer_params(cfg, model)
    if name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optim_cls = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r} is not 'ADAMW' or 'SGD'")
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model":
        optim_cls = maybe_add_full_model_gradient_clipping(cfg, optim_cls)
        return optim_cls(params, lr=cfg.SOLVER.BASE_LR, **kwargs)
    # "value" / "norm": D2's per-parameter clipping (a no-op when disabled).
    return maybe_add_gradient_clipping(cfg, optim_cls)(params, lr=cfg.SOLVER.BASE_LR, **kwargs)
