"""Convert official GLIP checkpoints to Detectron2 checkpoints, and back.

Usage::

    python -m glip_d2.convert glip_tiny_model_o365_goldg_cc_sbu.pth glip_t.pth [--ema]
    python -m glip_d2.convert --to-official glip_t.pth official.pth [--config-file CFG]

The forward direction writes ``{"model": state_dict, "__author__": ..., "matching_heuristics":
False}``, which ``DetectionCheckpointer`` / ``GLIPCheckpointer`` load directly. Files are read
with weights-only loading: a file holding pickled objects is refused.
"""

import argparse
import logging
import os
import sys

import torch
from detectron2.config import get_cfg

from .checkpoint import (
    convert_official_state_dict,
    glip_d2_to_official,
    is_official_state_dict,
    load_checkpoint_file,
    select_official_state_dict,
)
from .config import add_glip_config

__all__ = ["convert_official_file", "export_official_file", "main"]

logger = logging.getLogger("glip_d2.convert")


def convert_official_file(src, dst, ema=False):
    """Convert an official GLIP checkpoint file to a Detectron2 checkpoint file.

    Returns:
        (int, list[str]): number of tensors written and the official keys dropped on purpose.
    Raises:
        ValueError / KeyError: unreadable file, no such entry, or a key with no mapping.
    """
    checkpoint = load_checkpoint_file(src)
    state_dict = select_official_state_dict(checkpoint, ema=ema, source=src)
    if not is_official_state_dict(state_dict):
        raise ValueError(
            f"{src} does not look like an official GLIP checkpoint (no 'backbone.body.', "
            "'rpn.' or 'language_backbone.body.' keys)"
        )
    converted, dropped = convert_official_state_dict(state_dict)
    _save(
        {
            "model": converted,
            "__author__": f"GLIP official checkpoint ({'model_ema' if ema else 'model'}), "
            "converted by glip_d2",
            "matching_heuristics": False,
        },
        dst,
    )
    return len(converted), dropped


def export_official_file(src, dst, cfg=None):
    """Write a glip_d2 checkpoint in the official layout (``{"model": {"module."+key: ...}}``).

    Anchors are regenerated from ``cfg.MODEL.GLIP.ANCHOR_SIZES/ANCHOR_STRIDES`` (GLIP's when
    no config is given); see :func:`glip_d2.checkpoint.glip_d2_to_official`.
    """
    checkpoint = load_checkpoint_file(src)
    state_dict = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
    if is_official_state_dict(state_dict):
        raise ValueError(f"{src} is already in the official GLIP layout; nothing to export")
    kwargs = {}
    if cfg is not None:
        kwargs = dict(
            anchor_sizes=tuple(cfg.MODEL.GLIP.ANCHOR_SIZES),
            anchor_strides=tuple(cfg.MODEL.GLIP.ANCHOR_STRIDES),
            prior_prob=cfg.MODEL.GLIP.PRIOR_PROB,
        )
    official = glip_d2_to_official(state_dict, module_prefix=True, **kwargs)
    _save({"model": official}, dst)
    return len(official)


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m glip_d2.convert", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("src", help="input checkpoint (.pth / .pt / .safetensors, path or URL)")
    p.add_argument("dst", help="output .pth file")
    p.add_argument("--ema", action="store_true", help="take 'model_ema' instead of 'model'")
    p.add_argument(
        "--to-official",
        action="store_true",
        help="export a glip_d2 checkpoint to the official layout",
    )
    p.add_argument("--config-file", default="", help="glip_d2 config (anchors for --to-official)")
    return p


def _check_paths(args):
    """Refuse bad paths before reading gigabytes: the messages name the path at fault."""
    if "://" not in args.src:
        if not os.path.exists(args.src):
            raise ValueError(f"source checkpoint {args.src!r} does not exist")
        if os.path.isdir(args.src):
            raise ValueError(f"source checkpoint {args.src!r} is a folder, not a file")
    if os.path.isdir(args.dst):
        raise ValueError(f"destination {args.dst!r} is a folder; give the output file's name")
    folder = os.path.dirname(os.path.abspath(args.dst))
    if not os.path.isdir(folder):
        raise ValueError(f"destination folder {folder!r} does not exist (for {args.dst!r})")
    if (
        os.path.exists(args.src)
        and os.path.exists(args.dst)
        and os.path.samefile(args.src, args.dst)
    ):
        raise ValueError(f"source and destination are the same file ({args.src!r})")
    if args.config_file and not os.path.isfile(args.config_file):
        raise ValueError(f"config file {args.config_file!r} does not exist")


def _save(obj, dst):
    try:
        torch.save(obj, dst)
    except (RuntimeError, OSError) as e:  # torch reports a failed open as a RuntimeError
        raise ValueError(f"cannot write {dst!r}: {str(e).splitlines()[0]}") from e


def main(argv=None):
    """Command-line entry point. Returns 0, or 1 after printing ``error: ...`` for bad input
    (argparse's own usage errors exit with 2)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _check_paths(args)
        if args.to_official:
            cfg = None
            if args.config_file:
                cfg = add_glip_config(get_cfg())
                cfg.merge_from_file(args.config_file)
            n = export_official_file(args.src, args.dst, cfg)
            logger.info(f"wrote {n} tensors in the official layout to {args.dst}")
        else:
            n, dropped = convert_official_file(args.src, args.dst, ema=args.ema)
            logger.info(
                f"wrote {n} tensors to {args.dst}; dropped {len(dropped)} official keys on "
                "purpose (regenerated buffers and unused modules)"
            )
    except (ValueError, KeyError, OSError) as e:
        # KeyError's str() is the repr of its message; print the message itself.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
