#!/usr/bin/env python
"""The main job (``make demo``): synthetic benchmark -> train small GLIP on CPU -> evaluate.

1. generate ``glip_synth`` if missing (``$DETECTRON2_DATASETS/glip_synth``);
2. evaluate the untrained (randomly initialised) model on ``glip_synth_val`` and
   ``glip_synth_test_heldout``;
3. train the recipe of ``--layout`` from scratch through ``GLIPTrainer`` (what
   ``train_net.py`` runs): ``A`` (``configs/synthetic/glip_small_synth.yaml``, GLIP-T (A)'s head
   without deep fusion) or ``fused`` (``configs/synthetic/glip_small_synth_fused.yaml``, GLIP's
   deep fusion);
4. evaluate the trained model on both splits;
5. draw the predictions for a free-text prompt on a held-out image (D2 ``Visualizer``);
6. write ``output/main_job/metrics.json`` and print a summary.

Extra ``KEY VALUE`` pairs override the config (e.g. ``SOLVER.MAX_ITER 200``).
"""

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.utils.visualizer import Visualizer

import glip_d2  # noqa: F401  (registers the model and the datasets)
from glip_d2.data.synthetic import HELDOUT_CLASSES, HELDOUT_GROUP
from glip_d2.engine import GLIPTrainer, setup_cfg
from glip_d2.predictor import GLIPPredictor, read_image

REPO = Path(__file__).resolve().parents[1]

# --layout -> config; DEFAULT_LAYOUT is what `make demo` trains (README, "The main job").
LAYOUT_CONFIGS = {
    "A": REPO / "configs" / "synthetic" / "glip_small_synth.yaml",
    "fused": REPO / "configs" / "synthetic" / "glip_small_synth_fused.yaml",
}
DEFAULT_LAYOUT = "A"
SPLITS = ("glip_synth_val", "glip_synth_test_heldout")
# Free text with a held-out colour-shape pair ("blue star") next to seen ones.
PROMPT = "a blue star next to a red circle and a green square"
PHRASES = ("blue star", "red circle", "green square")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUT_CONFIGS),
        default=DEFAULT_LAYOUT,
        help=f"head layout to train: its recipe in configs/synthetic/ (default {DEFAULT_LAYOUT})",
    )
    parser.add_argument(
        "--config-file", default=None, help="another recipe (default: the --layout's)"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="default output/main_job for the default layout, else output/main_job_<layout>",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="training budget for slower machines: MAX_ITER is lowered (schedule scaled) to "
        "fit it at the speed of a few timed steps, a rough estimate (off by up to 50 %% "
        "here) (default 0: the config's MAX_ITER, about 9 minutes on 2 cores)",
    )
    parser.add_argument(
        "--skip-untrained-eval",
        action="store_true",
        help="do not evaluate the untrained model (saves a few minutes; metrics.json then has "
        "untrained: null)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.config_file is None:
        args.config_file = str(LAYOUT_CONFIGS[args.layout])
    if args.output_dir is None:
        name = "main_job" if args.layout == DEFAULT_LAYOUT else f"main_job_{args.layout}"
        args.output_dir = str(REPO / "output" / name)
    return args


def _rounded_ap(bbox, no_dets, key):
    return 0.0 if no_dets else round(float(bbox[key]), 2)


def _box_metrics(results):
    """{split: {"AP": .., "AP50": .., "AP75": ..}} from D2 test results; the held-out split also
    gets ``"heldout_combinations"``: AP / AP50 over its three unseen colour-shape classes alone
    (their mean and per class), computed by ``GLIPCOCOEvaluator`` from the same COCO evaluation
    (``glip_d2.evaluation.category_groups``).

    COCO reports NaN when a model returns no detection at all (an untrained model's scores stay
    below MODEL.GLIP.INFERENCE_TH); with no detection every AP is 0 by definition.
    """
    out = {}
    for name in SPLITS:
        bbox = results[name]["bbox"]
        no_dets = all(math.isnan(float(bbox[k])) for k in ("AP", "AP50", "AP75"))
        get = functools.partial(_rounded_ap, bbox, no_dets)
        out[name] = {k: get(k) for k in ("AP", "AP50", "AP75")}
        if no_dets:
            out[name]["no_detections"] = True
        if f"AP-{HELDOUT_GROUP}" in bbox:
            out[name][HELDOUT_GROUP] = {
                "AP": get(f"AP-{HELDOUT_GROUP}"),
                "AP50": get(f"AP50-{HELDOUT_GROUP}"),
                "per_class": {
                    c: {"AP": get(f"AP-{c}"), "AP50": get(f"AP50-{c}")} for c in HELDOUT_CLASSES
                },
            }
    return out


# A full run is slower per iteration than the timed steps: the trainer's hooks (metric writers,
# checkpoints) and its data-loader worker share the two cores. Measured: 0.420 s per iteration
# over a 10-minute run against 0.364 s for the timed steps.
HOOK_OVERHEAD = 1.15


def fit_schedule_to_budget(cfg, seconds, steps=20):
    """Lower ``SOLVER.MAX_ITER`` so that training takes about ``seconds`` here and now.

    Times ``steps`` training steps of a throw-away copy of the model (the first three are
    warm-up) and takes their mean (step times vary with the number of objects), plus
    ``HOOK_OVERHEAD`` for what the trainer adds around each step. It then scales ``MAX_ITER``,
    ``STEPS`` and ``CHECKPOINT_PERIOD`` by the same factor so the schedule keeps its shape.
    Returns (cfg, estimated seconds per iteration).
    """
    from detectron2.utils.events import EventStorage

    from glip_d2.engine import build_glip_optimizer, build_train_loop

    model = GLIPTrainer.build_model(cfg)
    loop = build_train_loop(
        cfg, model, GLIPTrainer.build_train_loader(cfg), build_glip_optimizer(cfg, model)
    )
    times = []
    with EventStorage(0):
        for i in range(steps):
            loop.iter = i
            t0 = time.perf_counter()
            loop.run_step()
            times.append(time.perf_counter() - t0)
    sec_per_iter = float(np.mean(times[3:])) * HOOK_OVERHEAD
    fit = int(seconds / sec_per_iter)
    if fit < cfg.SOLVER.MAX_ITER:
        scale = fit / cfg.SOLVER.MAX_ITER
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = max(fit, 1)
        cfg.SOLVER.STEPS = tuple(max(1, int(s * scale)) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.WARMUP_ITERS = int(cfg.SOLVER.WARMUP_ITERS * scale)
        cfg.SOLVER.CHECKPOINT_PERIOD = max(1, int(cfg.SOLVER.CHECKPOINT_PERIOD * scale))
        cfg.freeze()
    return cfg, sec_per_iter


def _phrase_spans(caption, phrases):
    spans = []
    for phrase in phrases:
        start = caption.find(phrase)
        if start < 0:
            raise ValueError(f"phrase {phrase!r} not in prompt {caption!r}")
        spans.append([[start, start + len(phrase)]])
    return spans


def prepare_glip_synth():
    """Generate glip_synth where glip_d2 registered it, unless a complete copy is there.

    Returns its root folder.
    """
    val_images = MetadataCatalog.get("glip_synth_val").image_root  # {root}/images/val
    root = os.path.dirname(os.path.dirname(val_images))
    script = REPO / "datasets" / "prepare_glip_synth.py"
    subprocess.run([sys.executable, str(script), "--root", root], check=True)
    return root


def phrase_scores_on_objects(instances, gt_boxes, iou_thresh=0.5):
    """Each phrase's best score on each ground-truth object of the drawn image.

    Args:
        instances (Instances): the predictor's detections (every score it keeps, i.e. above
            MODEL.GLIP.INFERENCE_TH), ``pred_classes`` indexing ``PHRASES``.
        gt_boxes (Tensor): (G, 4) XYXY boxes of the objects.
    Returns:
        list[dict[str, float]]: per object, phrase -> the highest score among the detections of
        that phrase overlapping the object with IoU >= iou_thresh (0.0 if none).
    """
    from detectron2.structures import Boxes, pairwise_iou

    iou = pairwise_iou(Boxes(gt_boxes), instances.pred_boxes)  # (G, D)
    out = []
    for g in range(len(gt_boxes)):
        scores = {}
        for p, phrase in enumerate(PHRASES):
            keep = (iou[g] >= iou_thresh) & (instances.pred_classes == p)
            scores[phrase] = round(float(instances.scores[keep].max()), 3) if keep.any() else 0.0
        out.append(scores)
    return out


def _heldout_objects(image_file):
    """(names, (G, 4) XYXY boxes) of the ground truth of a glip_synth_test_heldout image."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    names = MetadataCatalog.get("glip_synth_test_heldout").thing_classes
    record = next(
        r
        for r in DatasetCatalog.get("glip_synth_test_heldout")
        if os.path.basename(r["file_name"]) == os.path.basename(image_file)
    )
    anns = record["annotations"]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    return [names[a["category_id"]] for a in anns], torch.tensor(boxes, dtype=torch.float32)


@torch.no_grad()
def draw_prompt_predictions(cfg, model, image_file, out_file, score_thresh=0.3):
    """Run ``PROMPT`` on one held-out image with ``GLIPPredictor`` (the official test resize)
    and save the drawn detections (score >= score_thresh).

    Returns (the drawn detections, each ground-truth object's best score per phrase): the
    latter shows how strongly a phrase is given to an object it does not name (e.g. "blue
    star" on the yellow star) even where that stays below the drawing's threshold.
    """
    predictor = GLIPPredictor(cfg, model=model)
    image = read_image(image_file, format=cfg.INPUT.FORMAT)
    out = predictor(image, {"caption": PROMPT, "phrase_spans": _phrase_spans(PROMPT, PHRASES)})
    all_instances = out["instances"].to("cpu")
    names, gt_boxes = _heldout_objects(image_file)
    objects = [
        {"object": n, "box": [round(v, 1) for v in b], "phrase_scores": s}
        for n, b, s in zip(
            names, gt_boxes.tolist(), phrase_scores_on_objects(all_instances, gt_boxes), strict=True
        )
    ]
    instances = all_instances[all_instances.scores >= score_thresh]
    labels = [
        f"{PHRASES[c]} {s:.2f}"
        for c, s in zip(instances.pred_classes, instances.scores, strict=True)
    ]
    vis = Visualizer(image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image)
    drawn = vis.overlay_instances(boxes=instances.pred_boxes, labels=labels).get_image()
    cv2.imwrite(str(out_file), drawn[:, :, ::-1])
    detections = [
        {"phrase": PHRASES[int(c)], "score": round(float(s), 3), "box": [round(v, 1) for v in b]}
        for c, s, b in zip(
            instances.pred_classes,
            instances.scores,
            instances.pred_boxes.tensor.tolist(),
            strict=True,
        )
    ]
    return detections, objects


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    root = prepare_glip_synth()
    t_data = time.perf_counter() - t_start

    targs = default_argument_parser().parse_args(
        ["--config-file", args.config_file]
        + (["--resume"] if args.resume else [])
        + ["OUTPUT_DIR", args.output_dir, "DATASETS.TEST", str(SPLITS)]
        + args.opts
    )
    cfg = setup_cfg(targs)
    out_dir = Path(cfg.OUTPUT_DIR)

    # Untrained baseline: the same architecture at its random initialisation.
    untrained_metrics, t_eval_untrained = None, 0.0
    if not args.skip_untrained_eval:
        torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
        untrained = GLIPTrainer.build_model(cfg)
        t0 = time.perf_counter()
        untrained_metrics = _box_metrics(GLIPTrainer.test(cfg, untrained))
        t_eval_untrained = time.perf_counter() - t0
        del untrained

    sec_per_iter = None
    configured_iters = cfg.SOLVER.MAX_ITER
    if args.train_seconds > 0 and not args.resume:
        cfg, sec_per_iter = fit_schedule_to_budget(cfg, args.train_seconds)
        print(
            f"estimated {sec_per_iter:.2f} s/iteration: training {cfg.SOLVER.MAX_ITER} of "
            f"{configured_iters} iterations to fit {args.train_seconds:.0f} s"
        )
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    start_iter = trainer.start_iter
    t0 = time.perf_counter()
    trainer.train()  # the final EvalHook evaluates both splits (EMA weights if enabled)
    t_train_and_eval = time.perf_counter() - t0
    trained_metrics = _box_metrics(trainer._last_eval_results)

    image_file = os.path.join(root, "images", "test_heldout", "000000.jpg")
    png = out_dir / "prompt_predictions.png"
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    detections, objects = draw_prompt_predictions(cfg, model, image_file, png)

    metrics = {
        "config": os.path.relpath(args.config_file, REPO),
        "layout": args.layout,
        "early_fuse": bool(cfg.MODEL.GLIP.EARLY_FUSE),
        "iterations": cfg.SOLVER.MAX_ITER,
        "configured_iterations": configured_iters,
        "estimated_seconds_per_iteration": sec_per_iter,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "started_at_iteration": start_iter,
        "images_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "torch_threads": torch.get_num_threads(),
        "bf16_cpu": bool(cfg.SOLVER.GLIP.BF16_CPU),
        "seconds": {
            "dataset": round(t_data, 1),
            "eval_untrained": round(t_eval_untrained, 1),
            "train_and_final_eval": round(t_train_and_eval, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "untrained": untrained_metrics,
        "trained": trained_metrics,
        "prompt": {
            "caption": PROMPT,
            "image": os.path.relpath(image_file, REPO)
            if image_file.startswith(str(REPO))
            else image_file,
            "heldout_classes": list(HELDOUT_CLASSES),
            "detections": detections,
            "phrase_scores_on_objects": objects,
            "png": str(png),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)

    print("\n==== glip_d2 main job ====")
    print(
        f"config {metrics['config']} (layout {args.layout}, deep fusion "
        f"{metrics['early_fuse']}): {cfg.SOLVER.MAX_ITER} iterations x "
        f"{cfg.SOLVER.IMS_PER_BATCH} images, {torch.get_num_threads()} threads, "
        f"bf16={metrics['bf16_cpu']}"
    )
    total = metrics["seconds"]["total"]
    print(f"time: train + final eval {t_train_and_eval:.0f}s, total {total:.0f}s")
    print(f"{'model':<10} {'split / held-out combinations':<30} {'AP':>6} {'AP50':>6}")
    for which, res in (("untrained", untrained_metrics), ("trained", trained_metrics)):
        for split, m in (res or {}).items():
            print(f"{which:<10} {split:<30} {m['AP']:>6.1f} {m['AP50']:>6.1f}")
            combos = m.get(HELDOUT_GROUP)
            if combos:
                rows = [("  3 unseen combos (mean)", combos)]
                rows += [(f"    {c}", v) for c, v in combos["per_class"].items()]
                for label, v in rows:
                    print(f"{which:<10} {label:<30} {v['AP']:>6.1f} {v['AP50']:>6.1f}")
    print(f"prompt {PROMPT!r}: {len(detections)} boxes >= 0.3 drawn to {png}")
    for obj in objects:
        scores = ", ".join(f"{p} {v:.2f}" for p, v in obj["phrase_scores"].items())
        print(f"  best score per phrase on the {obj['object']}: {scores}")
    print(f"metrics: {out_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
