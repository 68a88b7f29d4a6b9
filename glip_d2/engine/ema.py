"""Exponential moving average of the model's weights (official ``SOLVER.MODEL_EMA``).

The average covers every floating-point entry of the state dict (parameters and buffers):
``ema = decay * ema + (1 - decay) * weight`` after each optimizer step; integer buffers are
copied. Evaluation during training swaps the averaged weights in, and the average is saved in
every checkpoint (key ``"ema"``) so that ``--resume`` continues it.
"""

import contextlib
import logging

import torch
from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

__all__ = ["EMAHook", "ModelEMA"]

logger = logging.getLogger(__name__)


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMA:
    """Shadow copy of a model's state dict, updated by :meth:`update`.

    It follows D2's checkpointable protocol (``state_dict`` / ``load_state_dict``) so it can
    be registered with ``checkpointer.add_checkpointable("ema", ema)``.
    """

    def __init__(self, model, decay):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"SOLVER.EMA.DECAY must be in [0, 1), got {decay}")
        self.decay = decay
        self.reset(model)

    def reset(self, model):
        """Restart the average at the model's current weights (after loading MODEL.WEIGHTS)."""
        self.shadow = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        self.num_updates = 0
        self.loaded_from_checkpoint = False

    @torch.no_grad()
    def update(self, model):
        """Move the average one step toward the model's current weights."""
        for key, value in _unwrap(model).state_dict().items():
            ema = self.shadow[key]
            if ema.is_floating_point():
                ema.mul_(self.decay).add_(value.detach().to(ema.dtype), alpha=1.0 - self.decay)
            else:
                ema.copy_(value)
        self.num_updates += 1

    @contextlib.contextmanager
    def apply_to(self, model):
        """Run the body with the averaged weights in ``model``; restore them afterwards."""
        module = _unwrap(model)
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            module.load_state_dict(backup)

    def copy_to(self, model):
        """Load the averaged weights into ``model`` for good (e.g. before exporting)."""
        _unwrap(model).load_state_dict(self.shadow)

    def state_dict(self):
        return {"shadow": self.shadow, "decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state):
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(
                f"EMA state in the checkpoint lacks {len(missing)} keys, e.g. {min(missing)!r}"
            )
        for key, value in state["shadow"].items():
            if key in self.shadow:
                self.shadow[key].copy_(value)
        self.num_updates = int(state.get("num_updates", 0))
        self.loaded_from_checkpoint = True


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every training step."""

    def __init__(self, ema, model):
        self.ema = ema
        self.model = model

    def after_step(self):
        self.ema.update(self.model)
