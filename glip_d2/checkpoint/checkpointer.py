"""``GLIPCheckpointer``: Detectron2's checkpointer that also reads official GLIP files.

Point ``MODEL.WEIGHTS`` at an official training checkpoint (``{"model": {"module.backbone.body.
...": ...}}``), a file written by ``python -m glip_d2.convert``, or a glip_d2 training
checkpoint: all load the same way. Unlike Detectron2's default, which only warns and skips a
tensor whose shape differs or that the model lacks, both are errors naming the key, because
they mean the config does not describe the checkpoint's model (the predictions would change
without a word). Checkpoints holding NaN/Inf are neither written nor read.
"""

import logging
import os
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .io import is_official_state_dict, load_checkpoint_file, select_official_state_dict
from .official import convert_official_state_dict, strip_module_prefix

__all__ = [
    "CheckpointMismatchError",
    "GLIPCheckpointer",
    "NonFiniteCheckpointError",
    "find_nonfinite_tensor",
]

logger = logging.getLogger(__name__)

# Model keys a full GLIP checkpoint may lack: the prompt-tuning table starts from zeros, the
# X-VLM objectives' heads from their initialisation.
_TUNABLE_KEYS = "language_backbone.tunable_linear."
_XVLM_KEYS = "xvlm."  # MODEL.GLIP.XVLM: training losses and retrieval, never detections
_OPTIONAL_MODEL_KEYS = (_TUNABLE_KEYS, _XVLM_KEYS)
# The text encoder's weights (HFLanguageBackbone.model).
_TEXT_ENCODER_KEYS = "language_backbone.model."
# Checkpoint keys the model may lack on purpose: buffers every model rebuilds from its config
# (older transformers and Swin code saved them; the values are fixed by the architecture).
_REGENERATED_BUFFERS = re.compile(
    r"(relative_position_index|embeddings\.position_ids|anchor_generator\.cell_anchors\.\d+)$"
)
# Dtypes torch.isfinite handles directly; other floating types (float8) are widened first.
_ISFINITE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model built from the config."""


class NonFiniteCheckpointError(ValueError):
    """A checkpoint (to write or read) holds NaN or infinite values."""


def find_nonfinite_tensor(obj, prefix=""):
    """The first floating-point tensor of a nested checkpoint that holds NaN or Inf.

    Args:
        obj: a tensor, or dicts / lists / tuples of them (other values are ignored).
        prefix (str): the key path of ``obj``.
    Returns:
        (str, int, int) or None: the key path ("model/head.bias0", "ema/shadow/...",
        "trainer/_trainer/optimizer/state/3/exp_avg"), the number of non-finite values and the
        tensor's size.
    """
    if torch.is_tensor(obj):
        if not (obj.is_floating_point() or obj.is_complex()) or obj.device.type == "meta":
            return None
        values = obj if obj.is_complex() or obj.dtype in _ISFINITE_DTYPES else obj.float()
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return None
        return prefix, int((~finite).sum()), obj.numel()
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = find_nonfinite_tensor(value, f"{prefix}/{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


class GLIPCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` for GLIP.

    * Files are read with ``torch.load(weights_only=True)`` (or safetensors); ``.pkl`` files
      and files holding other pickled objects are refused with a clear error.
    * An official state dict is recognised by its keys and renamed to glip_d2's layout
      (``docs/DESIGN.md``); keys dropped on purpose are logged.
    * Shapes are checked: a mismatch raises :class:`CheckpointMismatchError`.
    * A checkpoint of the whole detector (it holds ``head.*``) must cover every model tensor;
      the text encoder may come from elsewhere only when the model loaded its own pretrained
      weights (``MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT`` off). With that flag on, any
      checkpoint must hold the text encoder.
    * Every tensor of the checkpoint must belong to the model (``allow_unexpected_keys`` to
      drop the others); regenerated buffers (relative position indices, BERT position ids,
      cell anchors) are the exception. Checkpoints matched by D2's name heuristics
      (``"matching_heuristics": True``, e.g. backbone-only ImageNet weights) keep D2's rules.
    * No NaN/Inf: :meth:`save` refuses to write them, loading refuses to read them
      (:class:`NonFiniteCheckpointError`, naming the key).
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        ema=False,
        strict_shapes=True,
        text_encoder_from_checkpoint=None,
        allow_unexpected_keys=False,
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
            allow_unexpected_keys (bool): load a checkpoint that holds tensors the model does
                not have, dropping them with a warning (``MODEL.GLIP.ALLOW_UNEXPECTED_KEYS``).
        """
        super().__init__(model, save_dir, **kwargs)
        self.ema = ema
        self.strict_shapes = strict_shapes
        self.text_encoder_from_checkpoint = text_encoder_from_checkpoint
        self.allow_unexpected_keys = allow_unexpected_keys
        self._loaded_path = None

    def save(self, name, **kwargs):
        """fvcore's ``save``, but atomic on a local ``save_dir``: the file is written under a
        temporary name and renamed into place, and so is the ``last_checkpoint`` tag, so an
        interruption mid-write never leaves a truncated checkpoint or tag behind.

        Raises:
            NonFiniteCheckpointError: a tensor (weights, EMA, optimizer state) holds NaN/Inf;
                nothing is written, and the previous checkpoint stays the last one.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        found = find_nonfinite_tensor(data)
        if found is not None:
            key, bad, total = found
            raise NonFiniteCheckpointError(
                f"not saving {save_file}: tensor {key!r} holds {bad} NaN/Inf values (of "
                f"{total}); the training diverged. The last finite checkpoint is "
                f"{self.get_checkpoint_file() or 'none'}."
            )
        if not os.path.isdir(self.save_dir):  # a remote PathManager location
            return super().save(name, **kwargs)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        tag = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(tag, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # D2 resets this only after a successful load; a refused file must not make the
            # next load of the same checkpointer fail on D2's assertion.
            self._parsed_url_during_load = None

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
        found = find_nonfinite_tensor(loaded)
        if found is not None:
            key, bad, total = found
            raise NonFiniteCheckpointError(
                f"{filename}: tensor {key!r} holds {bad} NaN/Inf values (of {total}); "
                "glip_d2 does not load a non-finite checkpoint (it would predict or train on "
                "NaN). Use an earlier checkpoint of the run."
            )
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
        # D2's name heuristics load what matches (an ImageNet backbone with its classifier
        # "head.*"): neither extra nor missing tensors are errors there.
        heuristic = checkpoint.get("matching_heuristics", False)
        if not heuristic:  # checked before anything is loaded: a refused file changes nothing
            keys = strip_module_prefix(state_dict)
            self._check_unexpected(keys, model_sd, source)
            self._check_text_encoder([k for k in model_sd if k not in keys], source)
        is_full = not heuristic and any(k.startswith("head.") for k in stripped)
        incompatible = super()._load_model(checkpoint)
        # Dropped on purpose (allow_unexpected_keys) or regenerated: fvcore need not warn again.
        incompatible.unexpected_keys.clear()
        if heuristic:  # the file's names are only known after D2's matching
            self._check_text_encoder(incompatible.missing_keys, source)
        if is_full:
            self._check_missing(incompatible.missing_keys, source)
        return incompatible

    def _check_unexpected(self, state_dict, model_sd, source):
        """Tensors of the checkpoint that the model lacks: an error unless allowed."""
        extra = sorted(k for k in state_dict if k not in model_sd)
        regenerated = [k for k in extra if _REGENERATED_BUFFERS.search(k)]
        xvlm = [k for k in extra if k.startswith(_XVLM_KEYS)]
        unexpected = [k for k in extra if k not in regenerated and k not in xvlm]
        if xvlm:  # dropping them leaves the detections unchanged
            logger.info(
                f"{source}: {len(xvlm)} X-VLM tensor(s) are not loaded (MODEL.GLIP.XVLM is off "
                "in this config; they do not take part in detection)"
            )
        if regenerated:
            logger.info(
                f"{source}: {len(regenerated)} buffer(s) the model rebuilds from its config "
                f"are not loaded, e.g. {regenerated[0]!r}"
            )
        if not unexpected:
            return
        shown = ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
        if self.allow_unexpected_keys:
            logger.warning(
                f"{source}: dropping {len(unexpected)} tensor(s) the model does not have "
                f"(allow_unexpected_keys): {shown}"
            )
            return
        hint = (
            " It was prompt-tuned: set MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR True."
            if any(k.startswith(_TUNABLE_KEYS) for k in unexpected)
            else " The config's model sizes (e.g. MODEL.GLIP.NUM_LAYERS, EARLY_FUSE, "
            "MODEL.SWIN.DEPTHS) probably describe a different model."
        )
        raise CheckpointMismatchError(
            f"{source} holds {len(unexpected)} tensor(s) the model built from the config does "
            f"not have: {shown}. Loading would drop them and change the predictions.{hint} "
            "To load it anyway, pass allow_unexpected_keys=True to GLIPCheckpointer or set "
            "MODEL.GLIP.ALLOW_UNEXPECTED_KEYS True."
        )

    def _text_encoder_from_checkpoint(self):
        if self.text_encoder_from_checkpoint is not None:
            return bool(self.text_encoder_from_checkpoint)
        lang = getattr(self.model, "language_backbone", None)
        return bool(getattr(lang, "weights_from_checkpoint", False))

    def _check_text_encoder(self, missing_keys, source):
        """A text encoder built without weights must get every one of them from the file."""
        text_missing = [k for k in missing_keys if k.startswith(_TEXT_ENCODER_KEYS)]
        if not text_missing or not self._text_encoder_from_checkpoint():
            return
        raise CheckpointMismatchError(
            f"{source} lacks {len(text_missing)} text-encoder tensor(s) (e.g. "
            f"{text_missing[0]!r}), but the model was built with "
            "MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT, i.e. with a random text encoder "
            "that MODEL.WEIGHTS must fill. Point MODEL.WEIGHTS at a checkpoint that holds the "
            "text encoder (official GLIP files and glip_d2 training checkpoints do), or set "
            "MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT False to load the pretrained "
            "weights of MODEL.LANGUAGE_BACKBONE.MODEL_NAME."
        )

    def _check_missing(self, missing_keys, source):
        """A checkpoint of the whole detector must cover every tensor the model needs."""
        missing = [k for k in missing_keys if not k.startswith(_OPTIONAL_MODEL_KEYS)]
        if any(k.startswith(_TEXT_ENCODER_KEYS) for k in missing):
            # Allowed by _check_text_encoder: the encoder was built with pretrained weights.
            logger.info(
                f"{source} holds no text-encoder weights; the text encoder keeps the weights of "
                "MODEL.LANGUAGE_BACKBONE.MODEL_NAME it was built with"
            )
            missing = [k for k in missing if not k.startswith(_TEXT_ENCODER_KEYS)]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise CheckpointMismatchError(
                f"{source} lacks {len(missing)} tensor(s) the model needs: {shown}"
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
