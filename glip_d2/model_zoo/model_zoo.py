"""Catalog of the released GLIP weights and the glip_d2 configs that describe them.

``get("GLIP-T")`` builds the model and loads the official weights, downloaded once through
Detectron2's ``PathManager`` cache (``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``).
The official files are read as they are: ``GLIPCheckpointer`` converts them on load, and their
text encoder is used directly (no HuggingFace hub access).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from .. import modeling  # noqa: F401  (registers the meta-architecture and backbones)
from ..checkpoint import GLIPCheckpointer
from ..config import add_glip_config

__all__ = [
    "MODELS",
    "ReleasedModel",
    "get",
    "get_checkpoint_path",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
]

# The authors publish every file on their blob storage (microsoft/GLIP README, "Model Zoo") and
# mirror the same file names on the HuggingFace hub repository GLIPModel/GLIP.
OFFICIAL_URL_PREFIX = "https://penzhanwu2bbs.blob.core.windows.net/data/GLIPv1_Open/models/"
HF_URL_PREFIX = "https://huggingface.co/GLIPModel/GLIP/resolve/main/"


@dataclass(frozen=True)
class ReleasedModel:
    """One released model: glip_d2 config, official file name and reported numbers."""

    config_file: str  # relative to the configs folder
    filename: str  # official checkpoint file name
    official_config: str  # the official yaml it was released with
    pretrain_data: str
    coco_zero_shot: float  # COCO val2017 box AP
    coco_finetuned: float
    lvis_minival_last: float | None  # zero-shot LVIS minival (APr), last / best checkpoint
    lvis_minival_best: float | None
    odinw13_zero_shot: float

    @property
    def url(self):
        return OFFICIAL_URL_PREFIX + self.filename

    @property
    def hf_url(self):
        return HF_URL_PREFIX + self.filename


# Numbers: microsoft/GLIP README "Model Zoo" table. GLIP-L's fine-tuned COCO number
# uses multi-scale testing.
MODELS = {
    "GLIP-T_A": ReleasedModel(
        "GLIP-T_A.yaml",
        "glip_a_tiny_o365.pth",
        "configs/pretrain/glip_A_Swin_T_O365.yaml",
        "O365",
        42.9,
        52.9,
        None,
        14.2,
        28.7,
    ),
    "GLIP-T_B": ReleasedModel(
        "GLIP-T.yaml",
        "glip_tiny_model_o365.pth",
        "configs/pretrain/glip_Swin_T_O365.yaml",
        "O365",
        44.9,
        53.8,
        None,
        13.5,
        33.2,
    ),
    "GLIP-T_C": ReleasedModel(
        "GLIP-T.yaml",
        "glip_tiny_model_o365_goldg.pth",
        "configs/pretrain/glip_Swin_T_O365_GoldG.yaml",
        "O365, GoldG",
        46.7,
        55.1,
        14.3,
        17.7,
        44.4,
    ),
    "GLIP-T": ReleasedModel(
        "GLIP-T.yaml",
        "glip_tiny_model_o365_goldg_cc_sbu.pth",
        "configs/pretrain/glip_Swin_T_O365_GoldG.yaml",
        "O365, GoldG, CC3M, SBU",
        46.6,
        55.2,
        17.6,
        20.1,
        42.7,
    ),
    "GLIP-L": ReleasedModel(
        "GLIP-L.yaml",
        "glip_large_model.pth",
        "configs/pretrain/glip_Swin_L.yaml",
        "FourODs, GoldG, CC3M+12M, SBU",
        51.4,
        61.7,
        29.3,
        30.1,
        51.2,
    ),
}
# Aliases in the README's spelling.
_ALIASES = {"GLIP-T (A)": "GLIP-T_A", "GLIP-T (B)": "GLIP-T_B", "GLIP-T (C)": "GLIP-T_C"}


def _lookup(name):
    key = _ALIASES.get(name, name)
    if key.endswith(".yaml"):
        key = key[: -len(".yaml")]
    if key not in MODELS:
        raise KeyError(f"unknown GLIP model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[key]


def _configs_dir():
    """The configs folder: shipped inside the package, or the repository's ``configs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"glip_d2 configs not found (looked in {here / 'configs'} and "
        f"{here.parents[1] / 'configs'})"
    )


def get_config_file(name):
    """Path of the glip_d2 config of a released model (e.g. ``"GLIP-T"``, ``"GLIP-T_A"``)."""
    path = _configs_dir() / _lookup(name).config_file
    if not path.is_file():
        raise FileNotFoundError(f"config {path} of model {name!r} does not exist")
    return str(path)


def get_checkpoint_url(name):
    """Public URL of the official weights of a released model."""
    return _lookup(name).url


def get_checkpoint_path(name):
    """Local path of the official weights: downloaded once into the ``PathManager`` cache.

    A file already in the cache (or at ``$GLIP_D2_WEIGHTS/<file name>``, for machines without
    network access) is used as it is.
    """
    model = _lookup(name)
    local_dir = os.environ.get("GLIP_D2_WEIGHTS", "")
    if local_dir and os.path.isfile(os.path.join(local_dir, model.filename)):
        return os.path.join(local_dir, model.filename)
    return PathManager.get_local_path(model.url)


def get_config(name, trained=False):
    """The config of a released model; ``trained=True`` points ``MODEL.WEIGHTS`` at its weights.

    Returns:
        CfgNode: with glip_d2's keys; ``MODEL.DEVICE`` is "cuda" when available, else "cpu".
    """
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(get_config_file(name))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(name)
        # The official files hold the text encoder: build it without the hub.
        cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def get(name, trained=True, device=None):
    """Build a released GLIP model (eval mode), with its official weights when ``trained``."""
    cfg = get_config(name, trained=False)
    if device is not None:
        cfg.MODEL.DEVICE = device
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_path(name)
        cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True
    model = build_model(cfg)
    if trained:
        GLIPCheckpointer(model, text_encoder_from_checkpoint=True).load(cfg.MODEL.WEIGHTS)
    model.eval()
    return model
