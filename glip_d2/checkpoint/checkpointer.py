"""``GLIPCheckpointer``: Detectron2's checkpointer that also reads official GLIP files.

Point ``MODEL.WEIGHTS`` at an official training checkpoint (``{"model": {"module.backbone.body.
...": ...}}``), a file written by ``python -m glip_d2.convert``, or a glip_d2 training
checkpoint: all load the same way. Unlike Detectron2's default, which only warns and skips a
tensor whose shape differs, a shape mismatch here is an error naming the key and both shapes,
because it always means the config does not describe the checkpoint's model.
"""

import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .io import is_official_state_dict, load_checkpoint_file, select_official_state_dict
from .official import convert_official_state_dict, strip_module_prefix

__all__ = ["GLIPCheckpointer", "CheckpointMismatchError"]

logger = logging.getLogger(__name__)

# Model keys a full GLIP checkpoint may lack: the prompt-tuning table starts from zeros.
_OPTIONAL_MODEL_KEYS = ("language_backbone.tunable_linear.",)


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model built from the config."""


class GLIPCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` for GLIP.

    * Files are read with ``torch.load(weights_only=True)`` (or safetensors); ``.pkl`` files
      and files holding other pickled objects are refused with a clear error.
    * An official state dict is recognised by its keys and renamed to glip_d2's layout
      (``docs/DESIGN.md``); keys dropped on purpose are logged.
    * Shapes are checked: a mismatch raises :class:`CheckpointMismatchError`.
    * A checkpoint of the whole detector (it holds ``head.*``) must cover every model tensor;
      the text encoder may come from elsewhere only when the model loaded its own pretrained
      weights (``MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT`` off).
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        ema=False,
        strict_shapes=True,
        text_encoder_from_checkpoint=None,
        **kwargs,
    ):
        """
        Args:
            ema (bool): from an official file, load ``model_ema`` instead of ``model``.
            strict_shapes (bool): raise on shape mismatches (False: Detectron2's warn-and-skip).
            text_encoder_from_checkpoint (bool or None): the model's text encoder was built
                without weights (``MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT``), so the
                checkpoint must hold it. None: read ``model.language_backbone.
                weights_from_checkpoint`` when the module has it, else False.
        """
        super().__init__(model, save_dir, **kwargs)
        self.ema = ema
        self.strict_shapes = strict_shapes
        self.text_encoder_from_checkpoint = text_encoder_from_checkpoint
        self._loaded_path = None

    def save(self, name, **kwargs):
        """fvcore's ``save``, but atomic on a local ``save_dir``: the file is written under a
        temporary name and renamed into place, and so is the ``last_checkpoint`` tag, so an
        interruption mid-write never leaves a truncated checkpoint or tag behind."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not os.path.isdir(self.save_dir):  # a remote PathManager location
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        tag = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(tag, lambda f: f.write(last_filename_basename.encode()))

    def _torch_load(self, f):
        return load_checkpoint_file(f)

    def _load_file(self, filename):
        self._loaded_path = filename
        if filename.endswith(".safetensors"):
            loaded = {"model": load_checkpoint_file(filename)}
        elif filename.endswith((".pkl", ".pyth")):
            raise ValueError(
                f"checkpoint {filename!r}: .pkl/.pyth files are Python pickles, which glip_d2 "
                "does not load; convert them to a torch state dict or safetensors first"
            )
        else:
            loaded = super()._load_file(filename)
        model_sd = loaded.get("model")
        if isinstance(model_sd, dict) and is_official_state_dict(model_sd):
            state_dict = select_official_state_dict(loaded, ema=self.ema, source=filename)
            converted, dropped = convert_official_state_dict(state_dict)
            logger.info(
                f"Read an official GLIP checkpoint from {filename} "
                f"({'model_ema' if self.ema else 'model'}): {len(converted)} tensors mapped, "
                f"{len(dropped)} dropped on purpose (anchors, relative_position_index, cls_logits, "
                "pooler, ...)"
            )
            # Training state of the official trainer (optimizer, scheduler) does not apply.
            loaded = {"model": converted, "__author__": "GLIP (official)"}
        return loaded

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        model_sd = self.model.state_dict()
        source = self._loaded_path or "checkpoint"
        stripped = strip_module_prefix(state_dict)
        if self.strict_shapes:
            for key, value in stripped.items():
                if key in model_sd and torch.is_tensor(value):
                    want, have = tuple(model_sd[key].shape), tuple(value.shape)
                    if want != have:
                        raise CheckpointMismatchError(
                            f"{source}: tensor {key!r} has shape {have} in the checkpoint but "
                            f"{want} in the model built from the config; the config's model "
                            "sizes (e.g. MODEL.SWIN.*, MODEL.GLIP.CHANNELS/NUM_LAYERS, "
                            "MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE) do not describe this checkpoint"
                        )
        is_full = any(k.startswith("head.") for k in stripped)
        incompatible = super()._load_model(checkpoint)
        if is_full:
            self._check_missing(incompatible.missing_keys, stripped, source)
        return incompatible

    def _check_missing(self, missing_keys, state_dict, source):
        missing = [k for k in missing_keys if not k.startswith(_OPTIONAL_MODEL_KEYS)]
        text_from_ckpt = self.text_encoder_from_checkpoint
        if text_from_ckpt is None:
            lang = getattr(self.model, "language_backbone", None)
            text_from_ckpt = bool(getattr(lang, "weights_from_checkpoint", False))
        text_missing = [k for k in missing if k.startswith("language_backbone.")]
        if text_missing and not text_from_ckpt:
            logger.info(
                f"{source} holds no text-encoder weights; the text encoder keeps the weights of "
                "MODEL.LANGUAGE_BACKBONE.MODEL_NAME it was built with"
            )
            missing = [k for k in missing if not k.startswith("language_backbone.")]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            hint = (
                " The model was built with MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT, so "
                "the text encoder must come from MODEL.WEIGHTS."
                if text_missing and text_from_ckpt
                else ""
            )
            raise CheckpointMismatchError(
                f"{source} lacks {len(missing)} tensor(s) the model needs: {shown}.{hint}"
            )


def _atomic_write(path, write):
    """Call ``write(file)`` on ``path + ".tmp"``, flush it to disk, then rename it to ``path``."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
