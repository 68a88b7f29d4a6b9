"""Key mapping between official GLIP (maskrcnn-benchmark) state dicts and glip_d2's.

The layout is documented in ``docs/DESIGN.md``: glip_d2 keeps the official module names below
the top level, so conversion is a renaming of prefixes and never changes a tensor.
"""

import re

__all__ = ["official_to_glip_d2_key", "convert_official_state_dict", "DROPPED_OFFICIAL_KEYS"]

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

    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
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
