"""Key mapping between official GLIP (maskrcnn-benchmark) state dicts and glip_d2's.

The layout is documented in ``docs/DESIGN.md``: glip_d2 keeps the official module names below
the top level, so conversion is a renaming of prefixes and never changes a tensor.
"""

import re

from ..structures import legacy_cell_anchors

__all__ = [
    "DROPPED_OFFICIAL_KEYS",
    "TEXT_ENCODER_PREFIX",
    "convert_official_state_dict",
    "glip_d2_to_official",
    "glip_d2_to_official_key",
    "official_cell_anchors",
    "official_to_glip_d2_key",
    "strip_module_prefix",
    "swin_relative_position_index",
]

# Where the official model keeps its HuggingFace text encoder (docs/DESIGN.md, parameter layout).
TEXT_ENCODER_PREFIX = "language_backbone.body.model."

# Official keys that have no glip_d2 counterpart on purpose (regenerated buffers, unused or
# legacy modules). Each pattern is matched against the key without a "module." prefix.
DROPPED_OFFICIAL_KEYS = (
    re.compile(r"^backbone\.body\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$"),
    re.compile(r"^language_backbone\.body\.model\.pooler\..*"),
    re.compile(r"^language_backbone\.body\.model\.embeddings\.position_ids$"),
    re.compile(r"^rpn\.head\.cls_logits\..*"),
    re.compile(r"^rpn\.anchor_generator\.cell_anchors\.\d+$"),
    re.compile(r"^rpn\.resizer\..*"),
    re.compile(r"^rpn\.head\.mlm_head\..*"),
)

_PREFIX_RULES = (
    ("backbone.body.", "backbone.bottom_up."),
    ("backbone.fpn.", "backbone."),
    ("language_backbone.body.model.", "language_backbone.model."),
    ("rpn.tunable_linear.", "language_backbone.tunable_linear."),
)
_HEAD_TOP = re.compile(
    r"^rpn\.head\.(bbox_pred|centerness|scales|dot_product_projection_text|log_scale|bias0|bias_lang)"
    r"(\..*)?$"
)
_TOWER = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.(.*)$")


def strip_module_prefix(state_dict):
    """The state dict without the "module." prefix that DDP training files carry.

    As the official loader (and fvcore's), the prefix goes only when every key has it.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def official_to_glip_d2_key(key, early_fuse=True):
    """Map one official key (without "module.") to glip_d2's, or None when it is dropped.

    Args:
        key (str): official state-dict key.
        early_fuse (bool): the checkpoint's tower interleaves fusion, text and DyConv modules
            (3 per layer); False for GLIP-T (A), whose tower holds DyConv modules only.
    Raises:
        KeyError: for a key that is neither mapped nor deliberately dropped.
    """
    if any(p.match(key) for p in DROPPED_OFFICIAL_KEYS):
        return None
    for old, new in _PREFIX_RULES:
        if key.startswith(old):
            return new + key[len(old) :]
    m = _HEAD_TOP.match(key)
    if m:
        return "head." + key[len("rpn.head.") :]
    m = _TOWER.match(key)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        if not early_fuse:
            return f"head.tower.{index}.dyconv.{rest}"
        layer, slot = divmod(index, 3)
        if slot == 0:
            if not rest.startswith("b_attn."):
                raise KeyError(
                    f"official key {key!r}: expected a fusion block (b_attn) at tower index {index}"
                )
            return f"head.tower.{layer}.fusion.{rest[len('b_attn.') :]}"
        return f"head.tower.{layer}.{('text_layer', 'dyconv')[slot - 1]}.{rest}"
    raise KeyError(
        f"official key {key!r} has no glip_d2 counterpart and is not a known dropped key"
    )


def convert_official_state_dict(state_dict):
    """Rename an official GLIP state dict to glip_d2's layout.

    Strips a "module." prefix, detects whether the tower uses early fusion (any "b_attn" key),
    and casts floating tensors of other precisions (e.g. float8 storage) to float32.

    Returns:
        (dict, list[str]): converted state dict and the official keys dropped on purpose.
    Raises:
        KeyError: naming the first key that is neither mapped nor known to be dropped.
    """
    import torch

    state_dict = strip_module_prefix(state_dict)
    early_fuse = any(".b_attn." in k for k in state_dict)
    converted, dropped = {}, []
    for key, value in state_dict.items():
        new_key = official_to_glip_d2_key(key, early_fuse=early_fuse)
        if new_key is None:
            dropped.append(key)
            continue
        if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
            value = value.to(torch.float32)
        converted[new_key] = value
    return converted, dropped


# ---------------------------------------------------------------------------------------------
# Reverse direction: glip_d2 -> official layout
# ---------------------------------------------------------------------------------------------

_REVERSE_PREFIX_RULES = (
    ("backbone.bottom_up.", "backbone.body."),
    ("backbone.top_blocks.", "backbone.fpn.top_blocks."),
    ("backbone.fpn_", "backbone.fpn.fpn_"),
    ("language_backbone.model.", TEXT_ENCODER_PREFIX),
    ("language_backbone.tunable_linear.", "rpn.tunable_linear."),
)
_REVERSE_TOWER = re.compile(r"^head\.tower\.(\d+)\.(fusion|text_layer|dyconv)\.(.*)$")
_REVERSE_HEAD_TOP = re.compile(
    r"^head\.(bbox_pred|centerness|scales|dot_product_projection_text|log_scale|bias0|bias_lang)"
    r"(\..*)?$"
)


def glip_d2_to_official_key(key, early_fuse=True):
    """Map one glip_d2 key to the official key (without "module."); the inverse of
    :func:`official_to_glip_d2_key` on every key that function does not drop.

    Raises:
        KeyError: for a glip_d2 key that has no official counterpart.
    """
    for new, old in _REVERSE_PREFIX_RULES:
        if key.startswith(new):
            return old + key[len(new) :]
    if _REVERSE_HEAD_TOP.match(key):
        return "rpn." + key
    m = _REVERSE_TOWER.match(key)
    if m:
        layer, kind, rest = int(m.group(1)), m.group(2), m.group(3)
        if not early_fuse:
            if kind != "dyconv":
                raise KeyError(f"glip_d2 key {key!r}: a tower without early fusion has no {kind}")
            return f"rpn.head.dyhead_tower.{layer}.{rest}"
        slot = ("fusion", "text_layer", "dyconv").index(kind)
        prefix = "b_attn." if kind == "fusion" else ""
        return f"rpn.head.dyhead_tower.{3 * layer + slot}.{prefix}{rest}"
    raise KeyError(f"glip_d2 key {key!r} has no counterpart in the official GLIP layout")


def official_cell_anchors(anchor_sizes=(64, 128, 256, 512, 1024), strides=(8, 16, 32, 64, 128)):
    """The official ``rpn.anchor_generator.cell_anchors.{l}`` buffers, float32 (1, 4) each.

    One square legacy cell anchor per level (:func:`glip_d2.structures.legacy_cell_anchors`);
    level 0 of GLIP is ``[-28, -28, 35, 35]``.
    """
    if len(anchor_sizes) != len(strides):
        raise ValueError(
            f"anchor sizes {list(anchor_sizes)} and strides {list(strides)} differ in length"
        )
    return [
        legacy_cell_anchors(stride, (size,)).float()
        for size, stride in zip(anchor_sizes, strides, strict=True)
    ]


def swin_relative_position_index(window_size):
    """The Swin ``relative_position_index`` buffer (int64, (W*W, W*W)) for a square window."""
    import torch

    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


_BIAS_TABLE = re.compile(
    r"^(backbone\.body\.layers\.\d+\.blocks\.\d+\.attn\.)relative_position_bias_table$"
)


def glip_d2_to_official(
    state_dict,
    *,
    anchor_sizes=(64, 128, 256, 512, 1024),
    anchor_strides=(8, 16, 32, 64, 128),
    num_classes=80,
    prior_prob=0.01,
    module_prefix=False,
):
    """Export a glip_d2 state dict in the official GLIP layout (the official model loads it).

    Every glip_d2 tensor is renamed and kept as it is (same object, so bit-exact). Keys the
    official model holds but glip_d2 does not are regenerated deterministically:

    * ``backbone.body.layers.*.blocks.*.attn.relative_position_index``: from the window size,
      which follows from the shape of the block's ``relative_position_bias_table``;
    * ``rpn.anchor_generator.cell_anchors.{l}``: from ``anchor_sizes`` / ``anchor_strides``
      (``MODEL.GLIP.ANCHOR_SIZES`` / ``ANCHOR_STRIDES``);
    * ``rpn.head.cls_logits.{weight,bias}``: the unused classification conv
      (docs/OFFICIAL_BEHAVIOURS.md, "Unused classification conv"), exported with a zero weight
      and the prior bias ``-log((1 - p) / p)``; its trained values are never used for scoring
      and are not kept by the forward conversion.

    Not exported (the official loader ignores their absence): the text encoder's pooler,
    ``embeddings.position_ids``, ``rpn.resizer.*`` and ``rpn.head.mlm_head.*``.

    Args:
        state_dict (dict): glip_d2 model state dict.
        module_prefix (bool): prefix every key with "module." as official training files do.
    Returns:
        dict: official-layout state dict.
    """
    import math

    import torch

    early_fuse = any(".fusion." in k for k in state_dict if k.startswith("head.tower."))
    official = {}
    for key, value in state_dict.items():
        new_key = glip_d2_to_official_key(key, early_fuse=early_fuse)
        official[new_key] = value
        m = _BIAS_TABLE.match(new_key)
        if m:
            rows = value.shape[0]
            window = (math.isqrt(rows) + 1) // 2
            if (2 * window - 1) ** 2 != rows:
                raise ValueError(
                    f"{key}: {rows} rows is not (2W-1)^2 for any window size W; cannot rebuild "
                    "relative_position_index"
                )
            official[m.group(1) + "relative_position_index"] = swin_relative_position_index(window)
    for level, anchor in enumerate(official_cell_anchors(anchor_sizes, anchor_strides)):
        official[f"rpn.anchor_generator.cell_anchors.{level}"] = anchor
    if "rpn.head.bbox_pred.weight" in official:
        channels = official["rpn.head.bbox_pred.weight"].shape[1]
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        official["rpn.head.cls_logits.weight"] = torch.zeros(num_classes, channels, 1, 1)
        official["rpn.head.cls_logits.bias"] = torch.full((num_classes,), bias_value)
    if module_prefix:
        official = {"module." + k: v for k, v in official.items()}
    return official
