#!/usr/bin/env python
"""The main job's recipe with and without X-VLM's objectives (issue #17, docs/XVLM.md).

For each seed, trains the base config (default: the main job's
``configs/synthetic/glip_small_synth.yaml``) twice on glip_synth, same schedule and data order:
plain, and with the ``MODEL.GLIP.XVLM`` / ``TEST.GLIP.RETRIEVAL_*`` keys of ``--xvlm-config``
(default ``configs/xvlm/glip_small_synth_xvlm.yaml``; only those keys are taken, so any base
recipe, e.g. a deep-fusion one, can be compared). Each run is its own process. Reported:

* box AP / AP50 on ``glip_synth_val`` and ``glip_synth_test_heldout`` (all 20 categories, as the
  main job reports), and on the held-out combinations alone (the 3 HELDOUT categories of
  ``glip_synth_test_heldout``; pycocotools restricted to their ids);
* caption retrieval R@1 both ways on glip_synth's val captions (``glip_synth_val_retrieval``),
  from ITC and re-ranked by ITM; the plain model has no ITC head, its row gives the R@1 of a
  random ranking instead;
* seconds per training iteration (Detectron2's IterationTimer, median after the first 10 %)
  and the whole run's wall time.

Writes ``OUTPUT_DIR/results.json`` (every run and the mean/std per variant; each run's folder
holds its config, log, final model and ``result.json``) and prints a table.

    .venv/bin/python benchmarks/xvlm_compare.py --seeds 0 1          # the comparison
    .venv/bin/python benchmarks/xvlm_compare.py --quick              # a minutes-long check
    .venv/bin/python benchmarks/xvlm_compare.py --base-config C.yaml SOLVER.MAX_ITER 600
    .venv/bin/python benchmarks/xvlm_compare.py --step-times 20       # cost, interleaved steps
    .venv/bin/python benchmarks/xvlm_compare.py --gradient-norms 3    # what the weights rest on

Data order and the detector's initialisation are the same in both variants of a seed (the X-VLM
module is built after the detector), but runs are not bit-identical: a data-loader worker and
threads (the main job's README says so too), so the seeds' spread belongs to every comparison.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "synthetic" / "glip_small_synth.yaml"
XVLM_CONFIG = REPO / "configs" / "xvlm" / "glip_small_synth_xvlm.yaml"
VAL, HELDOUT, RETRIEVAL = "glip_synth_val", "glip_synth_test_heldout", "glip_synth_val_retrieval"
VARIANTS = ("plain", "xvlm")
# --quick: a few iterations and the first images of each evaluation split.
QUICK = {"iterations": 8, "eval_images": 16}


# ------------------------------------------------------------------------------ one run


def _subset(name, count):
    """Register (once) the first ``count`` records of ``name`` under a new name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    sub = f"{name}_first{count}"
    if sub not in DatasetCatalog.list():
        records = DatasetCatalog.get(name)[:count]
        DatasetCatalog.register(sub, lambda: records)
        meta = MetadataCatalog.get(name).as_dict()
        meta.pop("name")
        MetadataCatalog.get(sub).set(**meta)
    return sub


def _coco_box_metrics(cfg, dataset_name, category_names=None):
    """AP / AP50 (percent) of the evaluator's exported detections of ``dataset_name``, over its
    registered images (a subset is evaluated on its own images) and, optionally, only the
    categories ``category_names``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    meta = MetadataCatalog.get(dataset_name)
    gt = COCO(meta.json_file)
    image_ids = [r["image_id"] for r in DatasetCatalog.get(dataset_name)]
    path = Path(cfg.OUTPUT_DIR) / "inference" / dataset_name / "coco_instances_results.json"
    detections = json.loads(path.read_text()) if path.is_file() else []
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "detections": 0}
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.params.imgIds = image_ids
    if category_names is not None:
        by_name = {c["name"]: c["id"] for c in gt.loadCats(gt.getCatIds())}
        evaluator.params.catIds = [by_name[n] for n in category_names]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ap, ap50 = (float(v) for v in evaluator.stats[:2])
    return {
        "AP": round(100 * ap, 2) if ap >= 0 else None,  # -1: no GT of these categories
        "AP50": round(100 * ap50, 2) if ap50 >= 0 else None,
        "detections": len(detections),
    }


def _variant_cfg(base_config, xvlm_config, variant, opts):
    """The base config; for "xvlm" with the MODEL.GLIP.XVLM and TEST.GLIP.RETRIEVAL_* keys of
    ``xvlm_config``; then ``opts``."""
    from detectron2.config import get_cfg

    import glip_d2  # noqa: F401  (registers the model and the datasets)
    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(base_config)
    if variant == "xvlm":
        xvlm = add_glip_config(get_cfg())
        xvlm.merge_from_file(xvlm_config)
        cfg.MODEL.GLIP.XVLM = xvlm.MODEL.GLIP.XVLM.clone()
        cfg.TEST.GLIP.RETRIEVAL_ITM_TOP_K = xvlm.TEST.GLIP.RETRIEVAL_ITM_TOP_K
        cfg.TEST.GLIP.RETRIEVAL_BATCH_SIZE = xvlm.TEST.GLIP.RETRIEVAL_BATCH_SIZE
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg


def run_one(spec):
    """Train and evaluate one (variant, seed); returns its result dict."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from glip_d2.data.synthetic import HELDOUT as HELDOUT_PAIRS
    from glip_d2.engine import GLIPTrainer
    from glip_d2.evaluation import caption_table, random_ranking_recalls

    cfg = _variant_cfg(spec["base_config"], spec["xvlm_config"], spec["variant"], spec["opts"])
    cfg.defrost()
    if spec["iterations"]:
        scale = spec["iterations"] / cfg.SOLVER.MAX_ITER
        cfg.SOLVER.MAX_ITER = spec["iterations"]
        cfg.SOLVER.STEPS = tuple(max(1, int(s * scale)) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.WARMUP_ITERS = int(cfg.SOLVER.WARMUP_ITERS * scale)
    cfg.SOLVER.CHECKPOINT_PERIOD = cfg.SOLVER.MAX_ITER + 1  # only the final model is saved
    cfg.TEST.EVAL_PERIOD = 0  # evaluate once, after the last iteration
    cfg.SEED = spec["seed"]
    cfg.OUTPUT_DIR = spec["output_dir"]
    n = spec["eval_images"]
    val, heldout, retrieval = (_subset(d, n) if n else d for d in (VAL, HELDOUT, RETRIEVAL))
    cfg.DATASETS.TEST = (val, heldout) + ((retrieval,) if spec["variant"] == "xvlm" else ())
    cfg.freeze()
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    (Path(cfg.OUTPUT_DIR) / "config.yaml").write_text(cfg.dump())

    seed_all_rng(cfg.SEED)  # what default_setup does in train_net.py / the main job
    setup_logger(cfg.OUTPUT_DIR, name="glip_d2")
    t0 = time.perf_counter()
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with the evaluation of DATASETS.TEST
    wall = time.perf_counter() - t0
    results = trainer._last_eval_results
    times = [v for v, _ in trainer.storage.history("time").values()]
    timed = times[max(1, len(times) // 10) :] or times

    heldout_names = [" ".join(p) for p in HELDOUT_PAIRS]
    out = {
        "variant": spec["variant"],
        "seed": spec["seed"],
        "iterations": cfg.SOLVER.MAX_ITER,
        "seconds_per_iteration": round(statistics.median(timed), 4),
        "train_and_eval_seconds": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "box": {
            "val": _coco_box_metrics(cfg, val),
            "heldout_split": _coco_box_metrics(cfg, heldout),
            "heldout_combinations": _coco_box_metrics(cfg, heldout, heldout_names),
        },
        "eval_images": {d: len(DatasetCatalog.get(d)) for d in (val, heldout)},
        "losses_last": {
            k: round(float(v.latest()), 4)
            for k, v in trainer.storage.histories().items()
            if k.startswith("loss")
        },
    }
    if spec["variant"] == "xvlm":
        out["retrieval"] = results[retrieval]
    else:
        _, matches = caption_table([r["captions"] for r in DatasetCatalog.get(retrieval)])
        out["retrieval"] = {"retrieval_random": random_ranking_recalls(matches)}
    return out


def gradient_norms(base_config, xvlm_config, batches, opts):
    """Per objective, at initialisation and weight 1: its loss and the L2 norm of its gradient
    over the backbone and over the whole model, on ``batches`` training batches (the numbers
    behind the weights of configs/xvlm/)."""
    import torch

    from glip_d2.data import build_grounding_train_loader
    from glip_d2.engine import GLIPTrainer

    cfg = _variant_cfg(base_config, xvlm_config, "xvlm", opts)
    cfg.defrost()
    for key in ("ITC_WEIGHT", "ITC_BOX_WEIGHT", "ITM_WEIGHT", "MLM_WEIGHT"):
        cfg.MODEL.GLIP.XVLM[key] = 1.0
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
    model = GLIPTrainer.build_model(cfg).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loader = iter(build_grounding_train_loader(cfg))
    detection = ("loss_dot_product_token", "loss_reg", "loss_centerness")
    for step in range(batches):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.SOLVER.GLIP.BF16_CPU):
            losses = model(next(loader))
        terms = {"detection": sum(losses[k] for k in detection)}
        terms.update({k: v for k, v in losses.items() if k not in detection})
        row = {}
        for name, loss in terms.items():
            grads = torch.autograd.grad(
                loss, [p for _, p in named], retain_graph=True, allow_unused=True
            )
            total = backbone = 0.0
            for (n, _), g in zip(named, grads, strict=True):
                if g is not None:
                    sq = float((g.float() ** 2).sum())
                    total += sq
                    backbone += sq if n.startswith("backbone.") else 0.0
            row[name] = {
                "loss": round(float(loss), 3),
                "grad_backbone": round(backbone**0.5, 2),
                "grad_model": round(total**0.5, 2),
            }
        print(f"batch {step}: {json.dumps(row)}", flush=True)


def step_times(base_config, xvlm_config, steps, opts, warmup=2):
    """Median seconds of one training step (forward, losses, backward, AdamW step) of each
    variant, the two models stepping in turn on the same prefetched batches, so that a change
    of the machine's load hits both alike. Prints and returns {variant: seconds}."""
    import torch
    from detectron2.utils.events import EventStorage

    from glip_d2.engine import GLIPSimpleTrainer, GLIPTrainer, build_glip_optimizer

    loops, batches = {}, None
    for variant in VARIANTS:
        cfg = _variant_cfg(base_config, xvlm_config, variant, opts)
        if batches is None:
            loader = iter(GLIPTrainer.build_train_loader(cfg))
            batches = [next(loader) for _ in range(warmup + steps)]
        torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
        model = GLIPTrainer.build_model(cfg)
        loops[variant] = GLIPSimpleTrainer(
            model, batches, build_glip_optimizer(cfg, model), bf16=cfg.SOLVER.GLIP.BF16_CPU
        )
    times = {v: [] for v in VARIANTS}
    with EventStorage(0):
        for i in range(warmup + steps):
            for variant, loop in loops.items():
                loop.iter = i
                t0 = time.perf_counter()
                loop.run_step()
                if i >= warmup:
                    times[variant].append(time.perf_counter() - t0)
    out = {v: round(statistics.median(t), 4) for v, t in times.items()}
    print(
        f"median step over {steps} interleaved steps (after {warmup}): {out}, X-VLM "
        f"{100 * (out['xvlm'] / out['plain'] - 1):+.0f} %; load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return out


# ------------------------------------------------------------------------------ driver


def _summary(runs):
    """Mean and sample std over seeds of each reported number, per variant."""

    def numbers(run):
        box = {
            f"{split}_{k}": v
            for split, m in run["box"].items()
            for k, v in m.items()
            if k in ("AP", "AP50")
        }
        ret = {
            f"{kind}_{k}": v
            for kind, m in run["retrieval"].items()
            for k, v in m.items()
            if k.endswith("R@1")
        }
        return {**box, **ret, "seconds_per_iteration": run["seconds_per_iteration"]}

    out = {}
    for variant in VARIANTS:
        rows = [numbers(r) for r in runs if r["variant"] == variant]
        if not rows:
            continue
        out[variant] = {}
        for key in rows[0]:
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                out[variant][key] = {
                    "mean": round(statistics.mean(values), 3),
                    "std": round(statistics.stdev(values), 3) if len(values) > 1 else None,
                    "n": len(values),
                }
    return out


def _fmt(entry, digits=1):
    if entry is None:
        return "n/a"
    std = f" ± {entry['std']:.{digits}f}" if entry["std"] is not None else ""
    return f"{entry['mean']:.{digits}f}{std}"


def _print_table(summary, conditions):
    print("\n==== X-VLM objectives on the main job's recipe ====")
    print(
        f"base {conditions['base_config']}, X-VLM keys from {conditions['xvlm_config']}; "
        f"{conditions['iterations']} iterations, seeds {conditions['seeds']}, "
        f"evaluation images per split: {conditions['eval_images'] or 'all'}; "
        f"load average at the end {conditions['load_average_1min_at_end']}"
    )
    cols = [
        ("val AP", "val_AP"),
        ("val AP50", "val_AP50"),
        ("held-out split AP50", "heldout_split_AP50"),
        ("held-out 3 combos AP", "heldout_combinations_AP"),
        ("held-out 3 combos AP50", "heldout_combinations_AP50"),
        ("i2t R@1", "retrieval_i2t_R@1"),
        ("t2i R@1", "retrieval_t2i_R@1"),
        ("i2t R@1 ITM", "retrieval_itm_i2t_R@1"),
        ("t2i R@1 ITM", "retrieval_itm_t2i_R@1"),
        ("s / iter", "seconds_per_iteration"),
    ]
    print("| variant | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for variant, numbers in summary.items():
        print(
            f"| {variant} | "
            + " | ".join(_fmt(numbers.get(k), 2 if k.startswith("seconds") else 1) for _, k in cols)
            + " |"
        )
    if "plain" in summary:
        p = summary["plain"]
        print(
            "plain model: no ITC head; a random ranking gives i2t R@1 "
            f"{_fmt(p.get('retrieval_random_i2t_R@1'))}, t2i R@1 "
            f"{_fmt(p.get('retrieval_random_t2i_R@1'))}"
        )
    if {"plain", "xvlm"} <= set(summary):
        a = summary["plain"]["seconds_per_iteration"]["mean"]
        b = summary["xvlm"]["seconds_per_iteration"]["mean"]
        print(f"extra cost per iteration: {b - a:+.3f} s ({100 * (b / a - 1):+.0f} %)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-config", default=str(BASE_CONFIG))
    parser.add_argument("--xvlm-config", default=str(XVLM_CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--output-dir", default=str(REPO / "output" / "xvlm_compare"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['iterations']} iterations, the first {QUICK['eval_images']} images of "
        "each evaluation split: checks that everything runs, measures nothing",
    )
    parser.add_argument("--iterations", type=int, default=0, help="override SOLVER.MAX_ITER")
    parser.add_argument("--eval-images", type=int, default=0, help="first N images per split")
    parser.add_argument(
        "--gradient-norms",
        type=int,
        default=0,
        metavar="N",
        help="print each objective's gradient norm at initialisation on N batches and exit",
    )
    parser.add_argument(
        "--step-times",
        type=int,
        default=0,
        metavar="N",
        help="time N training steps of both variants in turn on the same batches and exit",
    )
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.run_one:
        spec = json.loads(args.run_one)
        result = run_one(spec)
        (Path(spec["output_dir"]) / "result.json").write_text(json.dumps(result, indent=1))
        return None
    if args.step_times:
        step_times(args.base_config, args.xvlm_config, args.step_times, args.opts)
        return None
    if args.gradient_norms:
        gradient_norms(args.base_config, args.xvlm_config, args.gradient_norms, args.opts)
        return None
    if len(args.seeds) < 2 and not args.quick:
        parser.error("the comparison needs at least 2 seeds (--seeds 0 1)")
    iterations = args.iterations or (QUICK["iterations"] if args.quick else 0)
    eval_images = args.eval_images or (QUICK["eval_images"] if args.quick else 0)

    # glip_synth ($DETECTRON2_DATASETS/glip_synth) is generated once here unless complete.
    subprocess.run(
        [sys.executable, str(REPO / "datasets" / "prepare_glip_synth.py")], check=True, cwd=REPO
    )
    out_dir = Path(args.output_dir)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            spec = {
                "variant": variant,
                "seed": seed,
                "base_config": str(Path(args.base_config).resolve()),
                "xvlm_config": str(Path(args.xvlm_config).resolve()),
                "opts": args.opts,
                "iterations": iterations,
                "eval_images": eval_images,
                "output_dir": str((out_dir / f"{variant}_seed{seed}").resolve()),
            }
            print(f"--- {variant}, seed {seed} -> {spec['output_dir']}", flush=True)
            cmd = [sys.executable, __file__, "--run-one", json.dumps(spec)]
            run_dir = Path(spec["output_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "result.json").unlink(missing_ok=True)
            with open(run_dir / "run.log", "w") as log:  # the trainer's log and warnings
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            if proc.returncode != 0 or not (run_dir / "result.json").is_file():
                sys.stderr.write((run_dir / "run.log").read_text()[-4000:])
                raise SystemExit(f"run {variant} seed {seed} failed (log: {run_dir / 'run.log'})")
            runs.append(json.loads((run_dir / "result.json").read_text()))
            r = runs[-1]
            print(
                f"    val AP50 {r['box']['val']['AP50']}, held-out combinations AP50 "
                f"{r['box']['heldout_combinations']['AP50']}, "
                f"{r['seconds_per_iteration']} s/iteration",
                flush=True,
            )

    conditions = {
        "base_config": os.path.relpath(args.base_config, REPO),
        "xvlm_config": os.path.relpath(args.xvlm_config, REPO),
        "overrides": args.opts,
        "seeds": args.seeds,
        "iterations": runs[0]["iterations"],
        "eval_images": eval_images,
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "torch_threads": runs[0]["torch_threads"],
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    summary = _summary(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.json", "w") as f:
        json.dump({"conditions": conditions, "summary": summary, "runs": runs}, f, indent=1)
    _print_table(summary, conditions)
    print(f"results: {out_dir / 'results.json'}")
    return summary


if __name__ == "__main__":
    main()
