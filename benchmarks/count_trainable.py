#!/usr/bin/env python
"""Trainable parameters of each transfer recipe (configs/transfer/), printed as a markdown table.

Builds every recipe's model from its config without loading weights (GLIP-T's BERT is built
from its known architecture, nothing is downloaded), applies the recipe's tuning mode exactly as
the trainer does (``glip_d2.engine.apply_tuning_mode``) and counts the parameters that require
gradients. Run from the repository root::

    python benchmarks/count_trainable.py
"""

import argparse
import logging

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import glip_d2  # noqa: F401  (registers the model)
from glip_d2.config import add_glip_config
from glip_d2.engine import apply_tuning_mode

RECIPES = [
    ("GLIP-T", mode, f"configs/transfer/glip_t_{mode}.yaml")
    for mode in ("full", "prompt", "linear_prob")
] + [
    ("GLIP-small", mode, f"configs/transfer/glip_small_{mode}.yaml")
    for mode in ("full", "prompt", "linear_prob")
]


def count(config_file):
    """(trainable, total, trainable tensors, prompt rows in use x width) of one recipe."""
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME != "bundled-minilm":
        cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = True  # architecture only
    model = build_model(cfg)
    trainable = set(apply_tuning_mode(cfg, model))
    params = dict(model.named_parameters())
    n_train = sum(params[n].numel() for n in trainable)
    n_total = sum(p.numel() for p in params.values())
    lb = cfg.MODEL.LANGUAGE_BACKBONE
    return n_train, n_total, len(trainable), lb.MAX_QUERY_LEN * lb.HIDDEN_SIZE


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    logging.disable(logging.WARNING)
    print("| model | mode | trainable parameters | share of all | tensors |")
    print("|---|---|---:|---:|---:|")
    for model_name, mode, config_file in RECIPES:
        n_train, n_total, n_tensors, prompt_used = count(config_file)
        note = f" ({prompt_used:,} in the rows a prompt uses)" if mode == "prompt" else ""
        print(
            f"| {model_name} | {mode} | {n_train:,}{note} | {100 * n_train / n_total:.3f} % "
            f"of {n_total / 1e6:.1f} M | {n_tensors} |"
        )


if __name__ == "__main__":
    main()
