#!/usr/bin/env python
"""Transfer of the main job's model to a new domain: zero-shot, then k-shot tuning in the three
official modes (issue #15).

1. glip_synth's main-job model (``output/main_job/model_final.pth``; ``demo/main_job.py``
   trains it when missing, or ``--base-config`` / ``--base-weights``);
2. glip_novel (``datasets/prepare_glip_novel.py``): 9 classes of colours and shapes the model
   never saw (orange / pink / cyan x diamond / hexagon / cross), train 300 and val 90 images;
3. zero-shot: box AP / AP50 of the base model on ``glip_novel_val`` and on ``glip_synth_val``;
4. per seed, shots k and mode (``configs/transfer/glip_small_{full,prompt,linear_prob}.yaml``):
   ``train_net.py`` on the official k-shot subset of ``glip_novel_train``
   (``DATASETS.GLIP.FEW_SHOT k``, ``FEW_SHOT_SEED`` = the seed), then box AP on
   ``glip_novel_val`` and on ``glip_synth_val`` (what tuning made the model forget). Prompt
   tuning is evaluated twice: the tuned checkpoint as the official code uses it (the table
   shifts every prompt), and the unchanged base weights with the saved
   ``prompt_embedding.safetensors`` (glip_d2's way: only the tuned prompt changes);
5. ``OUTPUT/results.json`` (every run, mean and sample std over seeds), a table, and
   ``OUTPUT/transfer.png`` (AP vs shots per mode; glip_synth_val AP beside it).

Every step keeps its output under ``--output-dir`` and is skipped when already done, so an
interrupted run continues where it stopped. ``--quick`` checks the whole path in minutes (few
iterations, 8 evaluation images per set, one seed, 1 shot). Seeds start at 1: the official
k-shot rule keeps the json's image order for seed 0 (no shuffle), and that subset does not
change with the seed.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from glip_d2.engine.experiment_steps import first_images_subset, run_logged

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = REPO / "output" / "main_job"
BASE_RECIPE = REPO / "configs" / "synthetic" / "glip_small_synth.yaml"  # the main job's
MODES = ("full", "prompt", "linear_prob")
NOVEL_TRAIN, NOVEL_VAL, SYNTH_VAL = "glip_novel_train", "glip_novel_val", "glip_synth_val"
QUICK = {"iterations": 4, "eval_images": 8}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-config", default=None, help="default: the main job's config.yaml")
    p.add_argument("--base-weights", default=None, help="default: the main job's model")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iterations", type=int, default=None, help="default: each recipe's")
    p.add_argument("--output-dir", default=None, help="default: output/transfer[_quick]")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.shots):
        p.error(f"--shots must be >= 1, got {args.shots}")
    if args.quick:
        args.shots, args.seeds = args.shots[:1], args.seeds[:1]
        args.iterations = args.iterations or QUICK["iterations"]
    if args.output_dir is None:
        args.output_dir = str(REPO / "output" / ("transfer_quick" if args.quick else "transfer"))
    return args


def run(cmd, log):
    run_logged(cmd, log, REPO)


def recipe(mode):
    return REPO / "configs" / "transfer" / f"glip_small_{mode}.yaml"


def schedule(mode, iterations):
    """Overrides that shorten a recipe to ``iterations``, its LR steps scaled along."""
    if not iterations:
        return []
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(recipe(mode)))
    scale = iterations / cfg.SOLVER.MAX_ITER
    # D2's scheduler wants increasing milestones below MAX_ITER
    steps = tuple(
        sorted({max(1, round(s * scale)) for s in cfg.SOLVER.STEPS} & set(range(iterations)))
    )
    return ["SOLVER.MAX_ITER", str(iterations), "SOLVER.STEPS", str(steps)]


def eval_subsets(count, data_dir):
    """The evaluation sets, or (``count``) their first ``count`` images as sets of their own."""
    if not count:
        return {NOVEL_VAL: NOVEL_VAL, SYNTH_VAL: SYNTH_VAL}
    return {name: first_images_subset(name, count, data_dir) for name in (NOVEL_VAL, SYNTH_VAL)}


def evaluate(config_file, weights, out_dir, eval_sets, prompt_embedding=None):
    """Box AP / AP50 of ``weights`` on the evaluation sets ({set: {"AP", "AP50"}}); cached in
    ``out_dir/metrics.json``."""
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config
    from glip_d2.engine import evaluate_checkpoint

    done = Path(out_dir) / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out_dir)])
    cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING = str(prompt_embedding or "")
    cfg.DATASETS.TEST = tuple(eval_sets.values())
    cfg.freeze()
    results = evaluate_checkpoint(cfg)
    metrics = {
        name: {k: round(float(results[sub]["bbox"][k]), 2) for k in ("AP", "AP50")}
        for name, sub in eval_sets.items()
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(metrics, indent=1))
    return metrics


def tune(run_dir, mode, shots, seed, base_weights, iterations, opts):
    """train_net.py on the k-shot subset (skipped when finished); returns the final model."""
    run_dir = Path(run_dir)
    if (run_dir / "model_final.pth").is_file():
        return run_dir / "model_final.pth"
    run_dir.mkdir(parents=True, exist_ok=True)
    fixed = {
        "MODEL.WEIGHTS": base_weights,
        "DATASETS.TRAIN": f"('{NOVEL_TRAIN}',)",
        "DATASETS.TEST": "()",
        "DATASETS.GLIP.FEW_SHOT": shots,
        "DATASETS.GLIP.FEW_SHOT_SEED": seed,
        "SEED": seed,
        "OUTPUT_DIR": run_dir,
        "SOLVER.CHECKPOINT_PERIOD": 100000,  # the final model only: runs are short
    }
    cmd = ["train_net.py", "--config-file", recipe(mode)]
    cmd += [str(x) for pair in fixed.items() for x in pair]
    run([*cmd, *schedule(mode, iterations), *opts], run_dir / "train.log")
    return run_dir / "model_final.pth"


def few_shot_size(shots, seed):
    """Images and instances of the k-shot subset of glip_novel_train the run trains on."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2.data.few_shot import few_shot_subset

    num_classes = len(MetadataCatalog.get(NOVEL_TRAIN).thing_classes)
    subset = few_shot_subset(DatasetCatalog.get(NOVEL_TRAIN), shots, num_classes, seed)
    return {"images": len(subset), "instances": sum(len(r["annotations"]) for r in subset)}


def mean_std(values):
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return [round(statistics.mean(values), 2), round(std, 2)]


def main(argv=None):
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    import glip_d2  # noqa: F401  (registers the model and the datasets)

    setup_logger(name="glip_d2")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run(["datasets/prepare_glip_novel.py"], out / "dataset.log")

    # ---- the base model: the main job's
    base_dir = out / "base" if args.quick else MAIN_JOB  # --quick: a few-iteration base
    base_config = Path(args.base_config or base_dir / "config.yaml")
    base_weights = Path(args.base_weights or base_dir / "model_final.pth")
    if not base_weights.is_file():
        if args.base_weights:
            raise FileNotFoundError(f"--base-weights {base_weights} does not exist")
        if args.quick:
            cmd = ["train_net.py", "--config-file", BASE_RECIPE, "OUTPUT_DIR", base_dir]
            cmd += ["DATASETS.TEST", "()", "SOLVER.MAX_ITER", QUICK["iterations"]]
            run([*cmd, "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1"], out / "base.log")
        else:
            run(["demo/main_job.py", "--output-dir", MAIN_JOB], out / "main_job.log")
    eval_sets = eval_subsets(QUICK["eval_images"] if args.quick else 0, out / "data")
    results = {
        "base": {"config": str(base_config), "weights": str(base_weights)},
        "runs": {},
        "settings": {
            "shots": args.shots,
            "modes": args.modes,
            "seeds": args.seeds,
            "iterations": args.iterations or "recipe",
            "opts": args.opts,
            "eval_sets": eval_sets,
            "quick": args.quick,
        },
    }
    results["zero_shot"] = evaluate(base_config, base_weights, out / "zero_shot", eval_sets)

    # ---- k-shot tuning
    for mode in args.modes:
        for shots in args.shots:
            for seed in args.seeds:
                t = time.perf_counter()
                run_dir = out / f"{mode}_{shots}shot_seed{seed}"
                weights = tune(run_dir, mode, shots, seed, base_weights, args.iterations, args.opts)
                entry = {
                    "mode": mode,
                    "shots": shots,
                    "seed": seed,
                    "train_subset": few_shot_size(shots, seed),
                    "metrics": evaluate(recipe(mode), weights, run_dir / "eval", eval_sets),
                }
                if mode == "prompt":  # the base weights + the saved table, tuned prompt only
                    entry["metrics_prompt_file"] = evaluate(
                        base_config,
                        base_weights,
                        run_dir / "eval_prompt_file",
                        eval_sets,
                        prompt_embedding=run_dir / "prompt_embedding.safetensors",
                    )
                entry["seconds"] = round(time.perf_counter() - t, 1)
                results["runs"][run_dir.name] = entry

    results["summary"] = summarize(results)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    draw(results, out / "transfer.png")
    print(f"results: {out / 'results.json'}, figure: {out / 'transfer.png'}")
    return results


def summarize(results):
    """Per mode and shots: mean and sample std over seeds of AP / AP50 on both sets."""
    summary = {}
    groups = {}
    for entry in results["runs"].values():
        groups.setdefault((entry["mode"], entry["shots"]), []).append(entry)
        if entry["mode"] == "prompt":
            groups.setdefault(("prompt_file", entry["shots"]), []).append(
                dict(entry, metrics=entry["metrics_prompt_file"])
            )
    for (mode, shots), entries in sorted(groups.items()):
        summary.setdefault(mode, {})[str(shots)] = {
            f"{name}/{k}": mean_std([e["metrics"][name][k] for e in entries])
            for name in (NOVEL_VAL, SYNTH_VAL)
            for k in ("AP", "AP50")
        }
    return summary


def print_table(results):
    zero = results["zero_shot"]
    print("\n==== transfer to glip_novel (mean ± std over seeds) ====")
    head = f"{'mode':<14}{'shots':>6}{'novel AP':>16}{'novel AP50':>16}{'synth_val AP':>16}"
    print(head)
    print(
        f"{'zero-shot':<14}{0:>6}{zero[NOVEL_VAL]['AP']:>16.1f}{zero[NOVEL_VAL]['AP50']:>16.1f}"
        f"{zero[SYNTH_VAL]['AP']:>16.1f}"
    )
    for mode, by_shots in results["summary"].items():
        for shots, cols in by_shots.items():
            cells = [cols[f"{NOVEL_VAL}/AP"], cols[f"{NOVEL_VAL}/AP50"], cols[f"{SYNTH_VAL}/AP"]]
            print(f"{mode:<14}{shots:>6}" + "".join(f"{m:>10.1f} ±{s:>4.1f}" for m, s in cells))


def draw(results, path):
    """AP on glip_novel_val vs shots per mode (zero-shot at 0), and glip_synth_val AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zero = results["zero_shot"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    titles = ("new domain (glip_novel_val)", "original domain (glip_synth_val): forgetting")
    labels = {
        "full": "full model",
        "prompt": "prompt tuning (official: table on every prompt)",
        "prompt_file": "prompt tuning (glip_d2: base + prompt file)",
        "linear_prob": "linear probe",
    }
    for ax, name, title in zip(axes, (NOVEL_VAL, SYNTH_VAL), titles, strict=True):
        for mode, by_shots in results["summary"].items():
            shots = [0] + [int(k) for k in by_shots]
            mean = [zero[name]["AP"]] + [c[f"{name}/AP"][0] for c in by_shots.values()]
            std = [0.0] + [c[f"{name}/AP"][1] for c in by_shots.values()]
            style = "--" if mode == "prompt_file" else "-"
            ax.errorbar(shots, mean, yerr=std, marker="o", capsize=3, ls=style, label=labels[mode])
        ax.set_xlabel("shots per category (0 = zero-shot)")
        ax.set_ylabel("box AP")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
