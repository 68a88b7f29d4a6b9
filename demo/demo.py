"""GLIP demo: detect what a prompt names in images, draw boxes with phrase names and scores.

Examples::

    python demo/demo.py --config-file configs/GLIP-T.yaml --input a.jpg b.jpg \\
        --classes person bicycle "traffic light" --output out/ \\
        --opts MODEL.WEIGHTS glip_tiny_model_o365_goldg_cc_sbu.pth
    python demo/demo.py --config-file configs/GLIP-T.yaml --input a.jpg \\
        --prompt "a man rides a red bicycle" --output out/        # noun phrases (spaCy)
    python demo/demo.py ... --prompt "a red car" --phrase-spans '[[[0, 9]]]'

For every input image ``out/<name>.jpg`` (drawn) and ``out/<name>.json`` (detections) are
written; without ``--output`` the detections are printed.
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
from detectron2.config import get_cfg
from detectron2.utils.visualizer import ColorMode

from glip_d2.config import add_glip_config
from glip_d2.predictor import GLIPPredictor, read_image
from glip_d2.visualization import detection_records, draw_detections

logger = logging.getLogger("glip_d2.demo")


class VisualizationDemo:
    """Runs a :class:`GLIPPredictor` and draws its detections above a score threshold."""

    def __init__(self, cfg, confidence_threshold=0.5, instance_mode=ColorMode.IMAGE):
        self.predictor = GLIPPredictor(cfg)
        self.confidence_threshold = confidence_threshold
        self.instance_mode = instance_mode

    def run_on_image(self, image, prompt=None):
        """
        Args:
            image (np.ndarray): BGR uint8 image.
        Returns:
            (dict, VisImage, list[dict]): predictor output, drawing (RGB) and the kept detections.
        """
        out = self.predictor(image, prompt)
        detections = detection_records(out, self.confidence_threshold)
        vis = draw_detections(image[:, :, ::-1], detections, instance_mode=self.instance_mode)
        return out, vis, detections


def parse_prompt(args):
    """The predictor prompt given by the command line (or None: the config's test vocabulary)."""
    if args.classes:
        if args.prompt or args.phrase_spans:
            raise SystemExit("error: use --classes or --prompt, not both")
        return list(args.classes)
    if args.phrase_spans:
        if not args.prompt:
            raise SystemExit("error: --phrase-spans needs --prompt (the caption they index)")
        try:
            spans = json.loads(args.phrase_spans)
        except json.JSONDecodeError as e:
            msg = f"error: --phrase-spans is not valid JSON ({e}): {args.phrase_spans}"
            raise SystemExit(msg) from e
        return {"caption": args.prompt, "phrase_spans": spans}
    return args.prompt or None


def setup_cfg(args):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.device:
        cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


def get_parser():
    p = argparse.ArgumentParser(description="GLIP grounded detection demo (glip_d2)")
    p.add_argument("--config-file", required=True, metavar="FILE", help="glip_d2 config")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--output", default="", help="output folder for drawings and JSON")
    p.add_argument("--classes", nargs="+", default=None, help="class names to detect")
    p.add_argument(
        "--prompt", default="", help="caption; split into noun phrases unless --phrase-spans"
    )
    p.add_argument(
        "--phrase-spans",
        default="",
        help="JSON list (per phrase) of [start, end) spans into --prompt",
    )
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--device", default="", help="override MODEL.DEVICE (cpu / cuda)")
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE"
    )
    return p


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_parser().parse_args(argv)
    prompt = parse_prompt(args)
    for path in args.input:
        if not os.path.isfile(path):
            raise SystemExit(f"error: input image {path!r} does not exist")
    demo = VisualizationDemo(setup_cfg(args), confidence_threshold=args.confidence_threshold)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    for path in args.input:
        image = read_image(path, format="BGR")
        out, vis, detections = demo.run_on_image(np.ascontiguousarray(image), prompt)
        record = {"image": path, "phrases": out["phrases"], "detections": detections}
        logger.info(f"{path}: {len(detections)} detections above {args.confidence_threshold}")
        if args.output:
            stem = os.path.splitext(os.path.basename(path))[0]
            vis.save(os.path.join(args.output, stem + ".jpg"))
            with open(os.path.join(args.output, stem + ".json"), "w") as f:
                json.dump(record, f, indent=1)
        else:
            print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
