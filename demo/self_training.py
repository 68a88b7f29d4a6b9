#!/usr/bin/env python
"""Self-training on glip_synth: a teacher pseudo-labels caption-only images, a student trains
on them (GLIP's third idea, issue #16).

1. glip_synth with its ``captions`` split (``--num-captions`` images of every colour-shape
   combination, held-out ones included, one caption each, no box);
2. the teacher: the main job's model (``output/main_job/model_final.pth`` + ``config.yaml``;
   ``demo/main_job.py`` trains it when missing) or ``--teacher-config`` / ``--teacher-weights``;
3. pseudo-labels of the captions split (``python -m glip_d2.pseudo_label``; phrases from the
   teacher's own token scores, ``--phrase-finder``), and their precision / recall at IoU 0.5
   against the split's hidden true boxes;
4. per seed, a *control* trained on the recipe's ``DATASETS.TRAIN`` (``glip_synth_train``)
   and a *student* trained on the same sets + the pseudo-labelled captions (a share
   ``--pseudo-share`` of the draws, ``DATASETS.GLIP.TRAIN_RATIOS``; caption packing and
   screening with the official defaults), both from scratch
   with the same recipe and schedule (``--config-file``, the main job's by default);
5. box AP / AP50 of teacher, controls and students on ``glip_synth_val``, on
   ``glip_synth_test_heldout`` and on its 3 held-out combinations alone (pycocotools restricted
   to their category ids); ``OUTPUT/results.json`` and a table.

Every step keeps its output under ``--output-dir`` and is skipped when already done (trainings
continue from their last checkpoint), so an interrupted run continues where it stopped.
``--quick`` checks the whole path in minutes: a few iterations, 16 captions, 4 evaluation
images per split, a low CAPTION_CONF and text threshold (the barely trained teacher scores
everything low). Extra ``KEY VALUE`` pairs override the control's and the student's config.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

import glip_d2  # noqa: F401  (registers the model and the datasets)
from glip_d2 import add_glip_config
from glip_d2.data.synthetic import ALL_CLASSES, CAPTION_SPLIT_SIZE, HELDOUT
from glip_d2.engine.experiment_steps import first_images_subset, run_logged
from glip_d2.evaluation.pseudo_labels import pseudo_label_quality

REPO = Path(__file__).resolve().parents[1]

CONFIG = REPO / "configs" / "synthetic" / "glip_small_synth.yaml"
MAIN_JOB = REPO / "output" / "main_job"
EVAL_SETS = ("glip_synth_val", "glip_synth_test_heldout")
HELDOUT_IDS = [ALL_CLASSES.index(f"{c} {s}") + 1 for c, s in HELDOUT]
PSEUDO_SET = "glip_synth_captions_pseudo"
DEFAULTS = add_glip_config(get_cfg())
QUICK_SCHEDULE = (
    "SOLVER.MAX_ITER 6 SOLVER.STEPS (4,) SOLVER.WARMUP_ITERS 2 SOLVER.CHECKPOINT_PERIOD 1000 "
    "SOLVER.IMS_PER_BATCH 2"
).split()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher-config", default=None, help="default: the main job's config.yaml")
    p.add_argument("--teacher-weights", default=None, help="default: the main job's model")
    p.add_argument("--config-file", default=str(CONFIG), help="control and student recipe")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--num-captions", type=int, default=CAPTION_SPLIT_SIZE)
    p.add_argument(
        "--pseudo-share",
        type=float,
        default=0.5,
        help="share of the student's draws from the pseudo-labelled captions (default 0.5)",
    )
    p.add_argument(
        "--phrase-finder",
        default="model",
        choices=("model", "spacy", "auto", "truth"),
        help="phrases of the captions: found by the teacher (default), spaCy, either, or the "
        "true phrase spans of the hidden truth (an upper bound for phrase finding)",
    )
    p.add_argument(
        "--text-threshold",
        type=float,
        default=None,
        help="TEST.GLIP.TEXT_THRESHOLD of the teacher's phrases (default: glip_d2's default, "
        "also when the teacher's saved config.yaml holds an older one)",
    )
    p.add_argument("--label-processes", type=int, default=1, help="pseudo-labelling processes")
    p.add_argument("--output-dir", default=None, help="default: output/self_training[_quick]")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if not 0 < args.pseudo_share < 1:
        p.error(f"--pseudo-share must lie in (0, 1), got {args.pseudo_share}")
    if args.quick:
        args.num_captions = min(args.num_captions, 16)
        if args.text_threshold is None:  # a few iterations leave every token scored low
            args.text_threshold = 0.2
    if args.text_threshold is None:
        args.text_threshold = DEFAULTS.TEST.GLIP.TEXT_THRESHOLD
    if args.output_dir is None:
        args.output_dir = str(
            REPO / "output" / ("self_training_quick" if args.quick else "self_training")
        )
    return args


def run(cmd, log):
    run_logged(cmd, log, REPO)


def as_opts(pairs):
    """{"KEY": value} -> ["KEY", "value", ...] for Detectron2's command-line overrides."""
    return [str(x) for pair in pairs.items() for x in pair]


def train(run_dir, config_file, opts):
    """train_net.py into ``run_dir`` (skipped when finished, resumed when interrupted)."""
    run_dir = Path(run_dir)
    if (run_dir / "model_final.pth").is_file():
        return run_dir / "model_final.pth"
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = ["--resume"] if (run_dir / "last_checkpoint").is_file() else []
    fixed = as_opts({"OUTPUT_DIR": run_dir, "DATASETS.TEST": "()", "MODEL.WEIGHTS": ""})
    run(
        ["train_net.py", "--config-file", config_file, *resume, *fixed, *opts],
        run_dir / "train.log",
    )
    return run_dir / "model_final.pth"


def eval_sets(quick, data_dir):
    """The evaluation sets: the registered splits, or (``--quick``) their first 4 images."""
    if not quick:
        return list(EVAL_SETS)
    return [first_images_subset(name, 4, data_dir) for name in EVAL_SETS]


def box_ap(gt_json, results_json, cat_ids=None):
    """pycocotools box AP / AP50 (percent) of saved detections, over ``cat_ids`` or all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_json)
    results = json.load(open(results_json))
    if cat_ids is not None:
        results = [r for r in results if r["category_id"] in cat_ids]
    if not results:
        return {"AP": 0.0, "AP50": 0.0}
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    if cat_ids is not None:
        evaluator.params.catIds = list(cat_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {"AP": round(100 * evaluator.stats[0], 2), "AP50": round(100 * evaluator.stats[1], 2)}


def evaluate(config_file, weights, out_dir, test_sets):
    """Box AP of a model on the evaluation sets, and on the held-out combinations alone."""
    from glip_d2.engine import evaluate_checkpoint

    done = Path(out_dir) / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out_dir)])
    cfg.DATASETS.TEST = tuple(test_sets)
    cfg.freeze()
    evaluate_checkpoint(cfg)
    metrics = {}
    for key, name in zip(("val", "test_heldout"), test_sets, strict=True):
        gt = MetadataCatalog.get(name).json_file
        res = Path(out_dir) / "inference" / name / "coco_instances_results.json"
        metrics[key] = box_ap(gt, str(res))
        if key == "test_heldout":
            metrics["heldout_combinations"] = box_ap(gt, str(res), HELDOUT_IDS)
    done.write_text(json.dumps(metrics, indent=1))
    return metrics


def captions_with_true_phrases(truth_json):
    """The captions split as CAPTIONS.json pairs carrying the spans that name each mentioned
    object (one phrase per object), from the hidden truth."""
    truth = json.load(open(truth_json))
    spans = {}
    for a in truth["annotations"]:
        if a["mentioned"]:
            spans.setdefault(a["image_id"], []).append(a["tokens_positive"])
    return [
        {
            "file_name": im["file_name"],
            "caption": im["caption"],
            "image_id": im["id"],
            "phrase_spans": sorted(spans[im["id"]]),
        }
        for im in truth["images"]
    ]


def recipe_mixture(config_file, opts, pseudo_share):
    """The recipe's training sets and the student's sampling weights: the recipe's own
    weights (``TRAIN_RATIOS``, else the set sizes) for its sets, and ``pseudo_share`` of the
    total for the pseudo-labelled captions."""
    from glip_d2.data.build import get_grounding_dataset_dicts

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    boxed = list(cfg.DATASETS.TRAIN)
    weights = list(cfg.DATASETS.GLIP.TRAIN_RATIOS)
    if not weights:
        weights = get_grounding_dataset_dicts(boxed, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)[1]
    weights = [float(w) / sum(weights) for w in weights]
    return boxed, [round(w * (1 - pseudo_share), 6) for w in weights] + [pseudo_share]


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds, t0 = {}, time.perf_counter()
    setup_logger()
    val_images = MetadataCatalog.get("glip_synth_val").image_root
    synth_root = os.path.abspath(os.path.dirname(os.path.dirname(val_images)))
    run(
        [
            "datasets/prepare_glip_synth.py",
            "--root",
            synth_root,
            "--num-captions",
            args.num_captions,
        ],
        out / "dataset.log",
    )
    seconds["dataset"] = time.perf_counter() - t0
    quick_opts = QUICK_SCHEDULE if args.quick else []
    conf_opts = ["DATASETS.GLIP.CAPTION_CONF", "0.05"] if args.quick else []

    # ---- teacher
    t = time.perf_counter()
    default_dir = out / "teacher" if args.quick else MAIN_JOB
    teacher_config = Path(args.teacher_config or default_dir / "config.yaml")
    teacher_weights = Path(args.teacher_weights or default_dir / "model_final.pth")
    if not teacher_weights.is_file():
        if args.teacher_weights:
            raise FileNotFoundError(f"--teacher-weights {teacher_weights} does not exist")
        if args.quick:
            train(default_dir, args.config_file, quick_opts)
        else:
            run(["demo/main_job.py", "--output-dir", default_dir], out / "main_job.log")
    seconds["teacher"] = time.perf_counter() - t
    test_sets = eval_sets(args.quick, out / "data")
    results = {"teacher": {"config": str(teacher_config), "weights": str(teacher_weights)}}
    results["teacher"]["metrics"] = evaluate(
        teacher_config, teacher_weights, out / "eval_teacher", test_sets
    )

    # ---- pseudo-labels
    t = time.perf_counter()
    finder = args.phrase_finder
    pseudo = out / f"pseudo_labels_{finder}.json"
    truth_json = os.path.join(synth_root, "annotations", "captions_truth.json")
    captions = os.path.join(synth_root, "annotations", "captions.json")
    if finder == "truth":  # the captions with the true phrase spans: phrases given, not found
        captions = out / "captions_with_true_phrases.json"
        captions.write_text(json.dumps(captions_with_true_phrases(truth_json)))
    image_root = os.path.join(synth_root, "images", "captions")
    if not pseudo.is_file():
        cmd = ["-m", "glip_d2.pseudo_label", "--config-file", teacher_config, "--weights"]
        cmd += [teacher_weights, "--captions", captions, "--image-root", image_root]
        cmd += ["--output", pseudo, "--num-gpus", args.label_processes]
        if finder != "truth":
            cmd += ["--phrase-finder", finder]
        cmd += ["--text-threshold", args.text_threshold]
        run([*cmd, *conf_opts], out / f"pseudo_label_{finder}.log")
    seconds["pseudo_labels"] = time.perf_counter() - t
    conf = 0.05 if args.quick else 0.5
    results["pseudo_labels"] = pseudo_label_quality(pseudo, truth_json, conf, HELDOUT_IDS)
    if not results["pseudo_labels"]["pseudo_boxes"]:
        raise RuntimeError(f"{pseudo}: no caption image kept a box above CAPTION_CONF {conf}")

    # ---- control and student per seed
    boxed, ratios = recipe_mixture(args.config_file, args.opts, args.pseudo_share)
    student_opts = (
        as_opts(
            {
                "DATASETS.TRAIN": (*boxed, PSEUDO_SET),
                "DATASETS.GLIP.PSEUDO_LABEL_SETS": [[PSEUDO_SET, str(pseudo), image_root]],
                "DATASETS.GLIP.TRAIN_RATIOS": ratios,
            }
        )
        + conf_opts
    )
    for seed in args.seeds:
        for kind, extra in (("control", []), ("student", student_opts)):
            t = time.perf_counter()
            # students of other phrase sources live apart; the control does not depend on it
            name = f"student_{finder}" if kind == "student" and finder != "model" else kind
            run_dir = out / f"{name}_seed{seed}"
            weights = train(
                run_dir, args.config_file, [*quick_opts, "SEED", str(seed), *extra, *args.opts]
            )
            metrics = evaluate(run_dir / "config.yaml", weights, run_dir / "eval", test_sets)
            results[f"{kind}_seed{seed}"] = {"seed": seed, "metrics": metrics}
            seconds[f"{kind}_seed{seed}"] = time.perf_counter() - t

    results["summary"] = summarize(results, args.seeds)
    results["settings"] = {
        "seeds": args.seeds,
        "num_captions": args.num_captions,
        "train_sets": [*boxed, PSEUDO_SET],
        "train_ratios": ratios,
        "phrase_finder": args.phrase_finder,
        "text_threshold": args.text_threshold,
        "quick": args.quick,
        "opts": args.opts,
        "config": args.config_file,
        "eval_sets": test_sets,
    }
    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    print(f"results: {out / 'results.json'}")
    return results


COLUMNS = (
    ("val", "AP"),
    ("val", "AP50"),
    ("test_heldout", "AP"),
    ("test_heldout", "AP50"),
    ("heldout_combinations", "AP"),
    ("heldout_combinations", "AP50"),
)


def summarize(results, seeds):
    """Mean and sample standard deviation over seeds of every column (control, student)."""
    summary = {}
    for kind in ("control", "student"):
        runs = [results[f"{kind}_seed{s}"]["metrics"] for s in seeds]
        summary[kind] = {
            f"{split}/{metric}": [
                round(float(np.mean(v)), 2),
                round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else 0.0,
            ]
            for split, metric in COLUMNS
            for v in [[r[split][metric] for r in runs]]
        }
    return summary


def print_table(results):
    print("\n==== self-training on glip_synth ====")
    print(f"{'model':<16}" + "".join(f"{s[:12] + ' ' + m:>18}" for s, m in COLUMNS))
    rows = [("teacher", results["teacher"]["metrics"])]
    rows += [
        (k, v["metrics"]) for k, v in results.items() if k.startswith(("control_", "student_"))
    ]
    for name, m in rows:
        print(f"{name:<16}" + "".join(f"{m[s][k]:>18.1f}" for s, k in COLUMNS))
    for kind, cols in results["summary"].items():
        print(
            f"{kind + ' mean':<16}"
            + "".join(
                f"{cols[f'{s}/{k}'][0]:>12.1f} ±{cols[f'{s}/{k}'][1]:>4.1f}" for s, k in COLUMNS
            )
        )
    q = results["pseudo_labels"]
    print(
        f"pseudo-labels: {q['pseudo_boxes']} boxes for {q['objects']} objects "
        f"({q['mentioned_objects']} mentioned): precision {q['precision']:.1f}, recall "
        f"{q['recall_mentioned']:.1f} of mentioned / {q['recall_all']:.1f} of all objects "
        f"(IoU 0.5, class-aware; class-agnostic {q['precision_class_agnostic']:.1f} / "
        f"{q['recall_class_agnostic']:.1f}); held-out combinations: precision "
        f"{q['heldout_precision']:.1f}, recall {q['heldout_recall_mentioned']:.1f}"
    )


if __name__ == "__main__":
    main()
