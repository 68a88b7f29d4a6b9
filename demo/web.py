#!/usr/bin/env python
"""The web demo (``make web``): a local page to try a GLIP model on your own images.

::

    .venv/bin/python demo/web.py                       # the main job's trained model
    .venv/bin/python demo/web.py --config-file configs/GLIP-T.yaml --weights glip_tiny.pth \\
        --port 8000 MODEL.DEVICE cuda                  # any config + weights (+ KEY VALUE)

then open http://127.0.0.1:7860/ (or the port given). Upload an image or pick a glip_synth
example, type class names, a caption with [bracketed] phrases or a free sentence, set the score
threshold, and see the boxes with phrase names and scores, and the table of detections.

Without ``--config-file`` the page serves the model ``make demo`` (``demo/main_job.py``)
trains: ``output/main_job/model_final.pth`` with the config the run saved next to it
(``output/main_job/config.yaml``). When it is missing it is trained first (about 10 minutes
on 2 CPU cores), unless ``--no-train`` is given.
"""

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from detectron2.config import get_cfg

from glip_d2.config import add_glip_config
from glip_d2.predictor import GLIPPredictor

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB_DIR = REPO / "output" / "main_job"
# Where demo/main_job.py generates glip_synth (datasets/prepare_glip_synth.py's default root).
DEFAULT_EXAMPLES = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_synth")

logger = logging.getLogger("glip_d2.web")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="GLIP web demo: a local page for grounded detection")
    p.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="glip_d2 config (default: the main job's, output/main_job/config.yaml)",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="checkpoint (default: the config's MODEL.WEIGHTS; without --config-file the main "
        "job's output/main_job/model_final.pth)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--threshold", type=float, default=0.3, help="initial score threshold")
    p.add_argument(
        "--examples",
        default=DEFAULT_EXAMPLES,
        metavar="DIR",
        help="glip_synth folder whose held-out images are offered as examples (generated if "
        "it is the default and missing)",
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="stop with a message instead of training the main job's model when it is missing",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main_job_model(train):
    """The main job's (config, weights), trained first by ``demo/main_job.py`` if missing."""
    config, weights = MAIN_JOB_DIR / "config.yaml", MAIN_JOB_DIR / "model_final.pth"
    if config.is_file() and weights.is_file():
        return str(config), str(weights)
    command = f"{sys.executable} {REPO / 'demo' / 'main_job.py'}"
    if not train:
        raise SystemExit(
            f"error: no trained model at {weights}. Train it with `make demo` ({command}; about "
            "10 minutes on 2 CPU cores), or give --config-file and --weights."
        )
    print(
        f"No trained model at {weights}: training it first with {command} (`make demo`: about "
        "10 minutes on 2 CPU cores; Ctrl-C stops it). Pass --config-file/--weights to serve "
        "another model instead.",
        flush=True,
    )
    if subprocess.run([sys.executable, str(REPO / "demo" / "main_job.py")], cwd=REPO).returncode:
        raise SystemExit(f"error: {command} failed (its output is above)")
    if not weights.is_file():
        raise SystemExit(f"error: {command} finished but wrote no {weights}")
    return str(config), str(weights)


def setup_cfg(args):
    config, weights = args.config_file, args.weights
    if not config:
        config, default_weights = main_job_model(train=not args.no_train)
        weights = weights if weights is not None else default_weights
    if not os.path.isfile(config):
        raise SystemExit(f"error: config file {config!r} does not exist")
    if weights and not os.path.isfile(weights):
        raise SystemExit(f"error: weights file {weights!r} does not exist")
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(config)
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg, config


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    from glip_d2.web import create_app, load_examples  # the web extra: FastAPI, uvicorn

    cfg, config = setup_cfg(args)
    if args.examples == DEFAULT_EXAMPLES and not os.path.isdir(args.examples):
        print(f"generating the glip_synth examples in {args.examples} (about 20 s)", flush=True)
        script = REPO / "datasets" / "prepare_glip_synth.py"
        subprocess.run([sys.executable, str(script), "--root", args.examples], check=True)
    examples = load_examples(args.examples)
    if not examples:
        logger.warning(f"no glip_synth examples in {args.examples}: the page offers upload only")

    predictor = GLIPPredictor(cfg)
    weights = cfg.MODEL.WEIGHTS or "none (random initialisation)"
    model_info = (
        f"Model: {config}, weights {weights}, device {cfg.MODEL.DEVICE}. Scores below "
        f"MODEL.GLIP.INFERENCE_TH = {cfg.MODEL.GLIP.INFERENCE_TH:g} are never returned."
    )
    app = create_app(predictor, examples=examples, threshold=args.threshold, model_info=model_info)

    import uvicorn

    print(f"glip_d2 web demo: open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
