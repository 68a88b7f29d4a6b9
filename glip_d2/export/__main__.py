"""Export a GLIP model to ONNX with the prompt as an input of the graph.

Usage::

    python -m glip_d2.export --config-file configs/GLIP-T.yaml --output export/glip_t \\
        MODEL.WEIGHTS glip_tiny_model_o365_goldg_cc_sbu.pth

writes ``model.onnx``, ``glip_export.json``, ``tokenizer/``, ``glip_runtime/`` and
``config.yaml`` to the output folder (glip_d2/export/bundle.py); the package ``glip_runtime``
runs the model with numpy, onnxruntime and tokenizers only. Config overrides (``KEY VALUE``
pairs, as in train_net.py) come after the options. The graph is traced on the CPU in fp32, whatever
``MODEL.DEVICE`` and ``MODEL.GLIP.INFERENCE_DTYPE`` say; the runtime chooses its own device
(onnxruntime providers).
"""

import argparse
import logging
import os
import sys

from detectron2.config import get_cfg

from ..config import add_glip_config
from ..data.datasets.coco import register_coco_from_cfg
from ..predictor import GLIPPredictor
from .bundle import export_folder
from .graph import DEFAULT_OPSET

logger = logging.getLogger("glip_d2.export")


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m glip_d2.export", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config-file", required=True, help="glip_d2 config (.yaml)")
    p.add_argument("--output", required=True, help="export folder (created if missing)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default 17)")
    p.add_argument("--ema", action="store_true", help="official files: take 'model_ema'")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the comparison of onnxruntime with PyTorch at a second image size",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def setup_cfg(args):
    """The config as train_net.py builds it (file, then overrides), on the CPU in fp32.

    Raises:
        ValueError: a missing config or weights file, overrides that are not KEY VALUE pairs
            or name unknown keys, a prompt embedding (not exportable).
    """
    if not os.path.isfile(args.config_file):
        raise ValueError(f"config file {args.config_file!r} does not exist")
    if len(args.opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise ValueError(f"config overrides {args.opts}: {e}") from e
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ValueError(f"MODEL.WEIGHTS {weights!r} does not exist")
    if cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING:
        raise ValueError(
            "MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING is set: a tuned prompt embedding applies "
            "to one prompt, chosen outside the graph, and is not exported; unset it"
        )
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.GLIP.INFERENCE_DTYPE = "float32"
    cfg.freeze()
    register_coco_from_cfg(cfg)
    return cfg


def main(argv=None):
    """Returns 0, or 1 after printing ``error: ...`` for bad input (argparse's own usage
    errors exit with 2)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise ValueError(f"--output {args.output!r} exists and is not a folder")
        cfg = setup_cfg(args)
        model = GLIPPredictor(cfg, ema=args.ema).model
        info = export_folder(cfg, model, args.output, opset=args.opset, check=not args.no_check)
    except (ValueError, KeyError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 1
    logger.info(
        f"wrote {os.path.join(args.output, 'model.onnx')} (opset {info['opset']}, traced at "
        f"{info['trace_size'][0]}x{info['trace_size'][1]}) and the runtime files to "
        f"{args.output}"
    )
    if info["check"] is not None:
        logger.info(
            "onnxruntime vs PyTorch at a second size, largest differences: "
            + ", ".join(f"{k} {v:.2g}" for k, v in info["check"].items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
