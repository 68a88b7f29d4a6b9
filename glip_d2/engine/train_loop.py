"""The inner training step: D2's ``SimpleTrainer`` plus bf16 autocast on CPU and the
official handling of non-finite losses."""

import logging
import time

import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = ["GLIPSimpleTrainer", "build_train_loop"]

logger = logging.getLogger(__name__)


def _all_finite(losses):
    """True when the total loss is finite on every rank (all ranks must skip together, since
    DDP's backward is a collective)."""
    finite = torch.isfinite(losses.detach()).all().to(torch.float32).reshape(1)
    if comm.get_world_size() > 1:
        finite = finite.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


class GLIPSimpleTrainer(SimpleTrainer):
    """``SimpleTrainer`` with optional bf16 autocast on CPU (``SOLVER.GLIP.BF16_CPU``).

    A step whose total loss is NaN/Inf on any rank is skipped (no backward, no update), as the
    official trainer zeroes such losses (microsoft/GLIP maskrcnn_benchmark/engine/trainer.py,
    ``do_train``), instead of D2's fail-fast error; the
    number of skipped steps is logged as ``skipped_nonfinite_steps``.
    """

    def __init__(self, model, data_loader, optimizer, *, bf16=False, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.bf16 = bf16
        self.skipped_steps = 0

    def run_step(self):
        assert self.model.training, "[GLIPSimpleTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        # Losses are reduced in fp32 even when the forward ran in bf16, as the official loss.
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if not _all_finite(losses):
            self.skipped_steps += 1
            logger.warning(
                f"Non-finite loss at iteration {self.iter}: "
                f"{ {k: float(v.detach()) for k, v in loss_dict.items()} }; step skipped"
            )
            get_event_storage().put_scalar("skipped_nonfinite_steps", self.skipped_steps)
            return
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_train_loop(cfg, model, data_loader, optimizer):
    """D2's ``AMPTrainer`` for fp16 AMP on CUDA, else :class:`GLIPSimpleTrainer`."""
    if cfg.SOLVER.AMP.ENABLED:
        if not cfg.MODEL.DEVICE.startswith("cuda"):
            raise ValueError(
                f"SOLVER.AMP.ENABLED needs CUDA (MODEL.DEVICE={cfg.MODEL.DEVICE!r}); "
                "use SOLVER.GLIP.BF16_CPU for mixed precision on CPU"
            )
        return AMPTrainer(model, data_loader, optimizer)
    bf16 = bool(cfg.SOLVER.GLIP.BF16_CPU) and cfg.MODEL.DEVICE == "cpu"
    return GLIPSimpleTrainer(model, data_loader, optimizer, bf16=bf16)
