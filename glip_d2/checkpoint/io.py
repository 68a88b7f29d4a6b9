"""Reading checkpoint files safely and recognising the official GLIP layout.

Files from outside are never unpickled as arbitrary objects: ``.pth``/``.pt`` files go through
``torch.load(weights_only=True)`` (tensors, dicts, lists, numbers and strings only) and
``.safetensors`` files through safetensors.
"""

import logging
import pickle

import torch
from detectron2.utils.file_io import PathManager

from .official import TEXT_ENCODER_PREFIX, strip_module_prefix

__all__ = [
    "load_checkpoint_file",
    "is_official_state_dict",
    "select_official_state_dict",
    "holds_text_encoder",
    "describe_checkpoint",
    "use_text_encoder_from_weights",
]

logger = logging.getLogger(__name__)

# Top-level prefixes that only the official (maskrcnn-benchmark) layout uses.
_OFFICIAL_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.", "language_backbone.body.")


def load_checkpoint_file(path, mmap=False):
    """Load a checkpoint without unpickling arbitrary objects.

    Args:
        path (str): local path or URL (fetched through Detectron2's ``PathManager`` cache).
        mmap (bool): memory-map a zip-format torch file (cheap key/shape inspection of a
            multi-GB checkpoint).
    Returns:
        dict: the file's top-level object.
    Raises:
        ValueError: the file holds pickled Python objects (or is not a checkpoint at all).
    """
    try:
        local = PathManager.get_local_path(path)
    except OSError as e:  # a URL that cannot be fetched
        raise ValueError(f"cannot fetch checkpoint {path!r}: {e}") from e
    if local.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(local, device="cpu")
        except SafetensorError as e:
            raise ValueError(
                f"cannot read checkpoint {path!r} as safetensors ({e}): the file is empty, "
                "truncated or not a safetensors file despite its name"
            ) from e
    if local.endswith(".pkl"):
        raise ValueError(
            f"checkpoint {path!r} is a Python pickle (.pkl); glip_d2 does not unpickle files "
            "from outside. Convert it to a torch state dict or safetensors first."
        )
    try:
        data = torch.load(local, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a pickle stream at all
            raise _unreadable(path, e) from e
        raise ValueError(
            f"checkpoint {path!r} holds pickled Python objects that weights-only loading refuses "
            f"({str(e).splitlines()[0]}). glip_d2 loads only tensors, dicts, lists, numbers and "
            "strings; re-save the state dict with torch.save(model.state_dict(), ...) in a "
            "trusted environment."
        ) from e
    except RuntimeError as e:
        if mmap and "mmap" in str(e):  # legacy (non-zip) file format: no memory map
            return load_checkpoint_file(path, mmap=False)
        raise _unreadable(path, e) from e
    except (EOFError, KeyError, UnicodeDecodeError) as e:
        # What torch's legacy reader raises on an empty file or on bytes that are not a pickle.
        raise _unreadable(path, e) from e
    if not isinstance(data, dict):
        raise ValueError(
            f"checkpoint {path!r} holds a {type(data).__name__}, expected a dict (a state dict "
            "or a dict with a 'model' entry)"
        )
    return data


def _unreadable(path, error):
    """The error for a file torch cannot parse, with the reader's own reason when it has one."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f"{type(error).__name__}: {lines[0]}" if lines else f"{type(error).__name__}"
    return ValueError(
        f"cannot read checkpoint {path!r}: the file is empty, truncated or not a torch "
        f"checkpoint ({detail})"
    )


def is_official_state_dict(state_dict):
    """Whether a state dict (with or without "module.") uses the official GLIP key layout."""
    keys = strip_module_prefix(state_dict).keys()
    return any(k.startswith(_OFFICIAL_PREFIXES) for k in keys)


def select_official_state_dict(checkpoint, ema=False, source="checkpoint"):
    """Pick the state dict of an official training file: ``model`` or ``model_ema``.

    Official files hold ``model`` (use it for the published numbers; docs/OFFICIAL_BEHAVIOURS.md,
    "Checkpoint files") and, when EMA
    was on, ``model_ema``. A bare state dict is accepted as it is (without ``ema``).

    Returns:
        dict: the chosen state dict, "module." stripped.
    Raises:
        KeyError: ``ema`` asked for but the file has no ``model_ema``, or no state dict found.
    """
    key = "model_ema" if ema else "model"
    if key in checkpoint and isinstance(checkpoint[key], dict):
        return strip_module_prefix(checkpoint[key])
    if ema:
        raise KeyError(
            f"{source} has no 'model_ema' entry (entries: {sorted(checkpoint)[:10]}); "
            "run without --ema / ema=False"
        )
    if all(torch.is_tensor(v) for v in checkpoint.values()):
        return strip_module_prefix(checkpoint)
    raise KeyError(
        f"{source} has no 'model' entry and is not a bare state dict "
        f"(entries: {sorted(checkpoint)[:10]})"
    )


def holds_text_encoder(state_dict):
    """Whether a state dict (official or glip_d2 layout) holds the text encoder's weights."""
    keys = strip_module_prefix(state_dict).keys()
    return any(k.startswith((TEXT_ENCODER_PREFIX, "language_backbone.model.")) for k in keys)


def describe_checkpoint(path):
    """Cheap summary of a checkpoint file: its layout and whether it holds the text encoder.

    Returns:
        dict: ``{"official": bool, "text_encoder": bool, "num_tensors": int}``.
    """
    data = load_checkpoint_file(path, mmap=True)
    state_dict = data.get("model", data) if isinstance(data.get("model"), dict) else data
    state_dict = {k: v for k, v in state_dict.items() if torch.is_tensor(v)}
    return {
        "official": is_official_state_dict(state_dict),
        "text_encoder": holds_text_encoder(state_dict),
        "num_tensors": len(state_dict),
    }


def use_text_encoder_from_weights(cfg):
    """Make the model take its text encoder from ``MODEL.WEIGHTS`` when that file holds it.

    Official GLIP files hold the whole BERT (``language_backbone.body.model.*``). Building with
    ``MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT`` then creates the encoder from its known
    architecture, so nothing is downloaded from the HuggingFace hub. Call before
    ``build_model(cfg)``; the config is changed in place (it must not be frozen).

    Returns:
        bool: whether the text encoder comes from ``MODEL.WEIGHTS``.
    Raises:
        ValueError: ``WEIGHTS_FROM_CHECKPOINT`` is set but the file holds no text encoder.
    """
    path = cfg.MODEL.WEIGHTS
    if not path:
        return False
    if describe_checkpoint(path)["text_encoder"]:
        cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
        return True
    if cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT:
        raise ValueError(
            f"MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT is set but MODEL.WEIGHTS={path!r} "
            "holds no text-encoder weights (no 'language_backbone.body.model.*' or "
            "'language_backbone.model.*' keys)"
        )
    logger.warning(
        f"MODEL.WEIGHTS={path!r} holds no text-encoder weights: the text encoder is loaded from "
        f"MODEL.LANGUAGE_BACKBONE.MODEL_NAME={cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME!r} (a hub "
        "name needs network access or a filled HuggingFace cache)"
    )
    return False
