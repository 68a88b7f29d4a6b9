#!/usr/bin/env python
"""Training step time of GLIP on this CPU: images/s, peak RSS, optionally against a baseline.

Cases:

* ``main-job``: ``configs/synthetic/glip_small_synth.yaml`` exactly as the main job trains it
  (its batch of 4, 256 x 256 images, its precision: bf16 autocast);
* ``GLIP-small``: ``configs/GLIP-small.yaml`` (trainable MiniLM, 256-token prompts, deformable
  convs, deep fusion) at ``--batch`` images of ``--size``, fp32 and bf16 autocast;
* ``GLIP-T``: GLIP-T's architecture (Swin-T, 6 fused DyHead layers, 256 channels) with the
  bundled MiniLM text encoder, likewise.

Each (case, precision, tree) runs in its own process (peak RSS is that process's VmHWM): it
builds the model from the tree's config (random weights), takes real training batches of
``glip_synth`` from the grounding train loader (prefetched, so data loading is not timed), and
times full training steps (forward, loss, backward, AdamW step) through ``GLIPSimpleTrainer``:
the median of ``--runs`` timed runs of ``--iters`` steps after ``--warmup`` steps.
``--baseline REV`` checks REV out in a temporary git worktree and measures it and the working
tree in the same run, alternating process by process, and prints new / baseline ratios. Both
trees read the same ``glip_synth`` (``--datasets``, generated there if missing).

    .venv/bin/python benchmarks/bench_train.py --baseline 8fb37ee --runs 3 --iters 3
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _harness  # benchmarks/_harness.py, next to this script

SCRIPT = Path(__file__).resolve()
_MINILM = [
    "MODEL.LANGUAGE_BACKBONE.MODEL_NAME",
    "bundled-minilm",
    "MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE",
    "384",
    "MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT",
    "False",
]
# name -> (config file, overrides, whether --batch / --size / precision apply).
CASES = {
    "main-job": ("configs/synthetic/glip_small_synth.yaml", [], False),
    "GLIP-small": ("configs/GLIP-small.yaml", [], True),
    "GLIP-T": ("configs/GLIP-T.yaml", _MINILM, True),
}


def _ensure_glip_synth(tree):
    """Generate glip_synth under $DETECTRON2_DATASETS unless a complete copy is there."""
    script = tree / "datasets" / "prepare_glip_synth.py"
    try:  # trees whose package still holds the generator
        from glip_d2.data.synthetic import ensure_glip_synth
    except ImportError:
        subprocess.run([sys.executable, str(script)], check=True, cwd=tree)
    else:
        ensure_glip_synth()


def _worker(args):
    import torch
    from detectron2.engine import default_argument_parser
    from detectron2.utils.events import EventStorage

    import glip_d2  # noqa: F401  (registers the model and the datasets)
    from glip_d2.engine import GLIPSimpleTrainer, GLIPTrainer, build_glip_optimizer, setup_cfg

    torch.set_num_threads(args.threads)
    _ensure_glip_synth(Path(args.tree))
    config_file, overrides, sized = CASES[args.case]
    overrides = overrides + [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        "",
        "DATASETS.TRAIN",
        "('glip_synth_train',)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(Path(args.tree) / "output" / "bench_train"),
    ]
    if sized:
        overrides += [
            "SOLVER.IMS_PER_BATCH",
            str(args.batch),
            "INPUT.MIN_SIZE_TRAIN",
            f"({args.size},)",
            "INPUT.MAX_SIZE_TRAIN",
            str(args.size),
        ]
    targs = default_argument_parser().parse_args(
        ["--config-file", str(Path(args.tree) / config_file)] + overrides + args.opts
    )
    cfg = setup_cfg(targs)
    bf16 = args.precision == "bf16" if sized else bool(cfg.SOLVER.GLIP.BF16_CPU)
    torch.manual_seed(0)
    model = GLIPTrainer.build_model(cfg)
    optimizer = build_glip_optimizer(cfg, model)
    loader = iter(GLIPTrainer.build_train_loader(cfg))
    steps = args.warmup + args.runs * args.iters
    batches = [next(loader) for _ in range(steps)]
    loop = GLIPSimpleTrainer(model, batches, optimizer, bf16=bf16)
    times = []
    with EventStorage(0):
        for i in range(steps):
            loop.iter = i
            t0 = time.perf_counter()
            loop.run_step()
            times.append(time.perf_counter() - t0)
    timed = times[args.warmup :]
    per_run = [sum(timed[r * args.iters : (r + 1) * args.iters]) for r in range(args.runs)]
    step = statistics.median(per_run) / args.iters
    return {
        "bf16": bf16,
        "batch": cfg.SOLVER.IMS_PER_BATCH,
        "step_s": step,
        "images_per_s": cfg.SOLVER.IMS_PER_BATCH / step,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "state_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20,
        "skipped": loop.skipped_steps,
        "input_hw": list(batches[0][0]["image"].shape[-2:]),
    }


def _report(args, trees, results):
    labels = list(trees)
    base = labels[0] if len(labels) > 1 else None
    print(
        f"Training steps on CPU: {_harness.conditions(args.threads)}; glip_synth batches, "
        f"median of {args.runs} runs x {args.iters} steps after {args.warmup} warm-up step(s); "
        f"each case in its own process, {args.processes} process(es) per tree and case, "
        f"alternating.\n"
    )
    header = (
        "| case | precision | tree | batch | input (h, w) | params (M) | state (MB) | step (s) "
    )
    header += "| images/s | peak RSS (GiB) |" + (
        " step new/baseline | RSS new/baseline |" if base else ""
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for (case, precision), by_tree in results.items():
        ref = None
        for tree in labels:
            runs = by_tree[tree]
            step = statistics.median(r["step_s"] for r in runs)
            rss = statistics.median(r["peak_rss_gib"] for r in runs)
            r = runs[0]
            shown = ("bf16 autocast" if r["bf16"] else "fp32") + (
                " (config)" if precision == "config" else ""
            )
            row = (
                f"| {case} | {shown} | {tree} | {r['batch']} | {tuple(r['input_hw'])} | "
                f"{r['params_m']:.1f} | {r['state_mb']:.0f} | {step:.2f} | {r['batch'] / step:.2f} "
                f"| {rss:.2f} |"
            )
            if base:
                row += " | |" if tree == base else f" {step / ref[0]:.2f} | {rss / ref[1]:.2f} |"
            ref = ref or (step, rss)
            print(row)
    skipped = [
        (k, t) for k, v in results.items() for t in labels if any(r["skipped"] for r in v[t])
    ]
    if skipped:
        print(f"\nruns with skipped (non-finite) steps: {skipped}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="git revision to compare against")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"]
    )
    parser.add_argument("--batch", type=int, default=2, help="images per step (sized cases)")
    parser.add_argument("--size", type=int, default=256, help="train image short=long side cap")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="steps per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--processes", type=int, default=1, help="processes per tree and case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--datasets", default=str(_harness.REPO / "datasets"), help="glip_synth root"
    )
    parser.add_argument("--opts", nargs="+", default=[], help="KEY VALUE ... for every case")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return _harness.emit_result(_worker(args))

    common = [
        f"--{k}={getattr(args, k)}" for k in ("batch", "size", "warmup", "iters", "runs", "threads")
    ]
    common += ["--opts", *args.opts] if args.opts else []
    env = {"DETECTRON2_DATASETS": str(Path(args.datasets).resolve())}
    results = {}
    with _harness.source_trees(args.baseline) as trees:
        for repeat in range(args.processes):
            order = list(trees.items())
            order = order if repeat % 2 == 0 else order[::-1]
            for case in args.cases:
                for precision in args.precisions if CASES[case][2] else ["config"]:
                    for label, tree in order:
                        extra = ["--case", case, "--precision", precision, "--tree", str(tree)]
                        result = _harness.run_worker(
                            SCRIPT, tree, common + extra, args.threads, env
                        )
                        results.setdefault((case, precision), {}).setdefault(label, []).append(
                            result
                        )
        _report(args, trees, results)


if __name__ == "__main__":
    main()
