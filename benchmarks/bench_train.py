#!/usr/bin/env python
"""Training throughput of GLIP on this CPU: images/s, peak RSS, with and without bf16.

Each (model, precision) case runs in its own process (so peak RSS is per case): it builds the
model from its config (random weights, MiniLM text encoder for GLIP-T), takes real training
batches of ``glip_synth`` from the grounding train loader (prefetched, so data loading is not
timed), and times full training steps (forward, loss, backward, AdamW step) through
``GLIPSimpleTrainer``. Reports the median of ``--runs`` timed runs of ``--iters`` steps after
``--warmup`` steps, as a markdown table with the conditions.

    .venv/bin/python benchmarks/bench_train.py --runs 3 --iters 3
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> (config file, overrides). GLIP-T keeps its architecture (Swin-T, 6 fused DyHead
# layers, 256 channels) but uses the bundled MiniLM text encoder (no network here).
CASES = {
    "GLIP-small": ("configs/GLIP-small.yaml", []),
    "GLIP-T (MiniLM)": (
        "configs/GLIP-T.yaml",
        [
            "MODEL.LANGUAGE_BACKBONE.MODEL_NAME",
            "bundled-minilm",
            "MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE",
            "384",
            "MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT",
            "False",
        ],
    ),
}


def _worker(args):
    import torch
    from detectron2.engine import default_argument_parser
    from detectron2.utils.events import EventStorage

    import glip_d2  # noqa: F401  (registers the model and the datasets)
    from glip_d2.engine import GLIPSimpleTrainer, GLIPTrainer, build_glip_optimizer, setup_cfg

    # Generates glip_synth unless a complete copy is there.
    subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_glip_synth.py")], check=True)
    config_file, overrides = CASES[args.case]
    targs = default_argument_parser().parse_args(
        ["--config-file", str(REPO / config_file)]
        + overrides
        + [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "DATASETS.TRAIN",
            "('glip_synth_train',)",
            "DATALOADER.NUM_WORKERS",
            "0",
            "SOLVER.IMS_PER_BATCH",
            str(args.batch),
            "INPUT.MIN_SIZE_TRAIN",
            f"({args.size},)",
            "INPUT.MAX_SIZE_TRAIN",
            str(args.size),
            "OUTPUT_DIR",
            str(REPO / "output" / "bench_train"),
        ]
    )
    cfg = setup_cfg(targs)
    torch.manual_seed(0)
    model = GLIPTrainer.build_model(cfg)
    optimizer = build_glip_optimizer(cfg, model)
    loader = iter(GLIPTrainer.build_train_loader(cfg))
    steps = args.warmup + args.runs * args.iters
    batches = [next(loader) for _ in range(steps)]
    loop = GLIPSimpleTrainer(model, batches, optimizer, bf16=args.bf16)
    times = []
    with EventStorage(0):
        for i in range(steps):
            loop.iter = i
            t0 = time.perf_counter()
            loop.run_step()
            times.append(time.perf_counter() - t0)
    timed = times[args.warmup :]
    per_run = [sum(timed[r * args.iters : (r + 1) * args.iters]) for r in range(args.runs)]
    n_params = sum(p.numel() for p in model.parameters())
    state_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    print(
        "RESULT "
        + json.dumps(
            {
                "case": args.case,
                "bf16": args.bf16,
                "images_per_s": args.batch * args.iters / statistics.median(per_run),
                "step_s": statistics.median(per_run) / args.iters,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "params_m": n_params / 1e6,
                "state_mb": state_mb,
                "skipped": loop.skipped_steps,
                "threads": torch.get_num_threads(),
                "input_hw": list(batches[0][0]["image"].shape[-2:]),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--size", type=int, default=256, help="train image short=long side cap")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="steps per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.case = args.worker
        return _worker(args)

    rows = []
    for case in args.cases:
        for bf16 in (False, True):
            cmd = [sys.executable, __file__, "--worker", case] + (["--bf16"] if bf16 else [])
            cmd += [
                f"--{k}={getattr(args, k)}" for k in ("batch", "size", "warmup", "iters", "runs")
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"benchmark case {case!r} (bf16={bf16}) failed")
            rows.append(json.loads(lines[-1][len("RESULT ") :]))

    load = os.getloadavg()
    print(
        f"Training throughput on CPU: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical cores, torch threads {rows[0]['threads']}, "
        f"batch {args.batch}, glip_synth images resized to {rows[0]['input_hw']} (h, w), "
        f"median of {args.runs} runs x {args.iters} steps after {args.warmup} warm-up step(s); "
        f"load average at the end {load[0]:.2f}\n"
    )
    print("| model | params (M) | state (MB) | precision | step (s) | images/s | peak RSS (MB) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['params_m']:.1f} | {r['state_mb']:.0f} | "
            f"{'bf16 autocast' if r['bf16'] else 'fp32'} | {r['step_s']:.2f} | "
            f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
