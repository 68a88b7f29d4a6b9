"""The inner training step: D2's ``SimpleTrainer`` / ``AMPTrainer`` step with bf16 autocast on
CPU and a bounded version of the official handling of non-finite losses."""

import logging
import math
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = ["GLIPAMPTrainer", "GLIPSimpleTrainer", "NonFiniteLossGuard", "build_train_loop"]

logger = logging.getLogger(__name__)


def _all_finite(losses):
    """True when the total loss is finite on every rank (all ranks must skip together, since
    DDP's backward is a collective)."""
    finite = torch.isfinite(losses.detach()).all().to(torch.float32).reshape(1)
    if comm.get_world_size() > 1:
        finite = finite.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


class NonFiniteLossGuard:
    """Decides whether a step with a non-finite loss is skipped or ends the training.

    The official trainer zeroes a NaN/Inf total loss and goes on (microsoft/GLIP
    maskrcnn_benchmark/engine/trainer.py, do_train), forever: once a weight is NaN every later
    loss is NaN, and the run "finishes" with a NaN model. Here a step is skipped at most
    ``max_skipped_steps`` times in a row; the next one raises ``FloatingPointError`` naming the
    iteration and the loss terms. The total number of skipped steps is the event-storage
    scalar ``skipped_steps`` (a count, not smoothed over the log window).

    The default of 5 lets the isolated bad batch the official zeroing is meant for pass, while
    a run whose weights turned NaN (every later loss is NaN) stops within 5 wasted steps.
    """

    def __init__(self, max_skipped_steps=5):
        if max_skipped_steps < 0:
            raise ValueError(f"SOLVER.GLIP.MAX_SKIPPED_STEPS must be >= 0, got {max_skipped_steps}")
        self.max_skipped_steps = int(max_skipped_steps)
        self.skipped_steps = 0  # over the whole run (restored on resume)
        self.consecutive = 0

    def check(self, iteration, loss_dict, losses):
        """Returns True when the step may go on (backward and update), False to skip it.

        Args:
            iteration (int): the trainer's iteration (for messages).
            loss_dict (dict[str, Tensor]): the scalar loss terms of this rank.
            losses (Tensor): their sum.
        Raises:
            FloatingPointError: more than ``max_skipped_steps`` non-finite steps in a row.
        """
        finite = _all_finite(losses)
        if finite:
            self.consecutive = 0
        else:
            self.skipped_steps += 1
            self.consecutive += 1
        get_event_storage().put_scalar("skipped_steps", self.skipped_steps, smoothing_hint=False)
        if finite:
            return True
        terms = {k: float(v.detach()) for k, v in loss_dict.items()}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        which = (
            f"non-finite: {', '.join(bad)}"
            if bad
            else "all finite on this rank; another rank's were not"
        )
        if self.consecutive > self.max_skipped_steps:
            first = iteration - self.consecutive + 1
            raise FloatingPointError(
                f"Training diverged: the loss was NaN/Inf at {self.consecutive} iterations in a "
                f"row ({first} to {iteration}), more than SOLVER.GLIP.MAX_SKIPPED_STEPS="
                f"{self.max_skipped_steps}. Loss terms at iteration {iteration}: {shown} "
                f"({which}). The weights are probably no longer finite: restart from an earlier "
                "checkpoint with a lower SOLVER.BASE_LR, a longer warm-up or gradient clipping."
            )
        logger.warning(
            f"Non-finite loss at iteration {iteration}: {shown} ({which}); step skipped "
            f"({self.consecutive} in a row, at most {self.max_skipped_steps}; "
            f"{self.skipped_steps} in all)"
        )
        return False


class GLIPSimpleTrainer(SimpleTrainer):
    """``SimpleTrainer`` with optional bf16 autocast on CPU (``SOLVER.GLIP.BF16_CPU``) and the
    :class:`NonFiniteLossGuard` instead of D2's fail-fast error on a non-finite loss."""

    def __init__(self, model, data_loader, optimizer, *, bf16=False, max_skipped_steps=5, **kw):
        super().__init__(model, data_loader, optimizer, **kw)
        self.bf16 = bf16
        self.guard = NonFiniteLossGuard(max_skipped_steps)

    @property
    def skipped_steps(self):
        """Steps skipped so far for a non-finite loss."""
        return self.guard.skipped_steps

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def run_step(self):
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with self._autocast():
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        # Losses are reduced in fp32 even when the forward ran in low precision, as the
        # official loss (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py).
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if not self.guard.check(self.iter, loss_dict, losses):
            return
        self._backward_and_step(losses, loss_dict, data_time)

    def _backward_and_step(self, losses, loss_dict, data_time):
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        ret["skipped_steps"] = self.guard.skipped_steps
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.guard.skipped_steps = int(state_dict.get("skipped_steps", 0))


class GLIPAMPTrainer(GLIPSimpleTrainer):
    """D2's ``AMPTrainer`` step (fp16 autocast on CUDA, ``GradScaler``) with the guard.

    The scaler already skips updates whose gradients overflow (and lowers its scale); the
    guard handles a non-finite *loss*, where D2's ``AMPTrainer`` raises at once. The trainer
    state holds ``grad_scaler`` as D2's does, so either resumes the other's checkpoints.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        grad_scaler=None,
        precision=torch.float16,
        max_skipped_steps=5,
    ):
        super().__init__(model, data_loader, optimizer, max_skipped_steps=max_skipped_steps)
        self.grad_scaler = grad_scaler if grad_scaler is not None else torch.amp.GradScaler("cuda")
        self.precision = precision

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.precision)

    def _backward_and_step(self, losses, loss_dict, data_time):
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def build_train_loop(cfg, model, data_loader, optimizer):
    """:class:`GLIPAMPTrainer` for fp16 AMP on CUDA, else :class:`GLIPSimpleTrainer`."""
    max_skipped = cfg.SOLVER.GLIP.MAX_SKIPPED_STEPS
    if cfg.SOLVER.AMP.ENABLED:
        if not cfg.MODEL.DEVICE.startswith("cuda"):
            raise ValueError(
                f"SOLVER.AMP.ENABLED needs CUDA (MODEL.DEVICE={cfg.MODEL.DEVICE!r}); "
                "use SOLVER.GLIP.BF16_CPU for mixed precision on CPU"
            )
        return GLIPAMPTrainer(model, data_loader, optimizer, max_skipped_steps=max_skipped)
    bf16 = bool(cfg.SOLVER.GLIP.BF16_CPU) and cfg.MODEL.DEVICE == "cpu"
    return GLIPSimpleTrainer(
        model, data_loader, optimizer, bf16=bf16, max_skipped_steps=max_skipped
    )
