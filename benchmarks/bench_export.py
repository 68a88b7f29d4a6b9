#!/usr/bin/env python
"""Latency of the exported model (onnxruntime, glip_runtime) against PyTorch's GLIPPredictor.

The same config, weights, image and prompt for every engine:

* ``onnx``: the export folder's ``glip_runtime`` (numpy + onnxruntime + tokenizers, no torch)
  on onnxruntime's CPU provider: resize, tokenization, graph, post-processing;
* ``torch``: ``GLIPPredictor`` as users call it (its prompt cache encodes a repeated prompt
  once, so the timed calls skip the text encoder);
* ``torch-nocache``: the same with ``MODEL.GLIP.PROMPT_CACHE_SIZE 0``, i.e. the same work as
  the exported graph (the text encoder on every call).

Without ``MODEL.WEIGHTS`` in ``--opts`` the script first saves random weights (seed 0) and
uses them for the export and for PyTorch, so all engines run one model. The export runs once
(``python -m glip_d2.export``, or ``--export-dir`` of an earlier run). Every measurement runs
in its own fresh process with ``--threads`` threads (torch threads, onnxruntime intra-op
threads): load, ``--warmup`` untimed calls, then ``--runs`` timed calls; the engines
alternate process by process, the order rotating every repeat (``--processes``). Reported:
medians of the timed calls and of the processes, load times, peak RSS, detections per call.

    .venv/bin/python benchmarks/bench_export.py --config-file configs/GLIP-small.yaml \\
        --runs 10 --processes 3 --threads 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness  # benchmarks/_harness.py, next to this script

SCRIPT = Path(__file__).resolve()
REPO = _harness.REPO
ENGINES = ("onnx", "torch", "torch-nocache")
DEFAULT_PROMPT = "person, dog, frisbee"


def _names(prompt):
    return [n.strip() for n in prompt.split(",") if n.strip()]


# ---------------------------------------------------------------------------- workers


def _time_calls(call, runs, warmup):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def worker_onnx(args):
    """In the export folder, without torch or glip_d2 (PYTHONPATH = the folder)."""
    import numpy as np
    import onnxruntime
    from glip_runtime import GLIPRuntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    start = time.perf_counter()
    runtime = GLIPRuntime(".", session_options=options)
    load = time.perf_counter() - start
    image = np.load(args.image)
    latency, out = _time_calls(lambda: runtime(image, _names(args.prompt)), args.runs, args.warmup)
    result = {
        "latency": latency,
        "load": load,
        "detections": len(out["scores"]),
        "peak_rss_gib": _harness.peak_rss_gib(),
        "torch_imported": "torch" in sys.modules,
    }
    print(_harness.RESULT_PREFIX + json.dumps(result), flush=True)


def worker_torch(args):
    """GLIPPredictor in the tree under test (the working directory)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    predictor = _predictor(args.config_file, args.opts, args.engine == "torch-nocache")
    load = time.perf_counter() - start
    image = np.load(args.image)
    latency, out = _time_calls(
        lambda: predictor(image, _names(args.prompt)), args.runs, args.warmup
    )
    result = {"latency": latency, "load": load, "detections": len(out["instances"])}
    _harness.emit_result(result)


def _predictor(config_file, opts, no_cache=False):
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config
    from glip_d2.predictor import GLIPPredictor

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", "cpu"])
    if no_cache:
        cfg.MODEL.GLIP.PROMPT_CACHE_SIZE = 0
    return GLIPPredictor(cfg)


def worker_weights(args):
    """Random weights (seed 0) of the config, saved to ``args.weights_out``."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from glip_d2 import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts) + ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, args.weights_out)
    _harness.emit_result({})


# ------------------------------------------------------------------------ orchestration


def _run(cmd, cwd, what):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{what} failed: {' '.join(map(str, cmd))}")


def _worker_args(args, engine, image, opts):
    return ["--worker", engine, "--config-file", str(Path(args.config_file).resolve()),
            "--image", str(image), "--prompt", args.prompt, "--runs", str(args.runs),
            "--warmup", str(args.warmup), "--threads", str(args.threads),
            "--opts", *opts]  # fmt: skip


def _image(args, folder):
    """The benchmark image (BGR uint8) saved as .npy: ``--image`` or a seeded random one."""
    import numpy as np

    if args.image:
        from PIL import Image

        image = np.asarray(Image.open(args.image).convert("RGB"))[:, :, ::-1]
    else:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    path = Path(folder) / "image.npy"
    np.save(path, np.ascontiguousarray(image))
    return path, image.shape[:2]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default=str(REPO / "configs" / "GLIP-small.yaml"))
    p.add_argument("--export-dir", help="an existing export folder of the same config/weights")
    p.add_argument("--image", help="image file (default: random uint8 --height x --width)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="comma-separated class names")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--runs", type=int, default=10, help="timed calls per process")
    p.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="untimed calls first (PyTorch's first calls were several times slower here)",
    )
    p.add_argument("--processes", type=int, default=3, help="processes per engine")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--opts", nargs="*", default=[], help="config overrides KEY VALUE ...")
    p.add_argument("--worker", choices=ENGINES + ("weights",), help=argparse.SUPPRESS)
    p.add_argument("--weights-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.engine = args.worker
    if args.worker:
        workers = {"onnx": worker_onnx, "weights": worker_weights}
        return workers.get(args.worker, worker_torch)(args)

    with tempfile.TemporaryDirectory(prefix="glip_bench_export_") as tmp:
        opts = list(args.opts)
        if "MODEL.WEIGHTS" not in opts[::2]:
            weights = Path(tmp) / "random_weights.pth"
            wargs = ["--worker", "weights", "--config-file", args.config_file,
                     "--weights-out", str(weights), "--opts", *opts]  # fmt: skip
            _run([sys.executable, str(SCRIPT), *wargs], REPO, "saving random weights")
            opts += ["MODEL.WEIGHTS", str(weights)]
        export_dir = Path(args.export_dir or Path(tmp) / "export").resolve()
        if not args.export_dir:
            cmd = [sys.executable, "-m", "glip_d2.export", "--config-file", args.config_file,
                   "--output", str(export_dir), "--no-check", *opts]  # fmt: skip
            start = time.perf_counter()
            _run(cmd, REPO, "the export")
            print(f"exported in {time.perf_counter() - start:.0f} s to {export_dir}")
        image_path, size = _image(args, tmp)
        results = {e: [] for e in args.engines}
        for rep in range(args.processes):
            shift = rep % len(args.engines)
            for engine in args.engines[shift:] + args.engines[:shift]:
                tree = export_dir if engine == "onnx" else REPO
                wargs = _worker_args(args, engine, image_path, opts)
                results[engine].append(_harness.run_worker(SCRIPT, tree, wargs, args.threads))
        _report(args, export_dir, size, results)


def _report(args, export_dir, size, results):
    import onnxruntime

    info = json.loads((export_dir / "glip_export.json").read_text())
    graph_mib = (export_dir / info["onnx_file"]).stat().st_size / 2**20
    print(
        f"{args.config_file}; image {size[0]}x{size[1]} resized with MIN_SIZE_TEST "
        f"{info['min_size_test']} / MAX_SIZE_TEST {info['max_size_test']}; prompt "
        f"{_names(args.prompt)}; {_harness.conditions(args.threads)}; onnxruntime "
        f"{onnxruntime.__version__} (CPU provider, {args.threads} intra-op threads); graph "
        f"{graph_mib:.0f} MiB, opset {info.get('opset')}; {args.processes} process(es) per "
        f"engine, alternating; per process {args.warmup} warm-up calls, then {args.runs} "
        "timed calls (median)."
    )
    print("\n| engine | latency (s) | load (s) | peak RSS (GiB) | detections | processes |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for engine, runs in results.items():
        medians[engine] = statistics.median(r["latency"] for r in runs)
        assert not any(r.get("torch_imported") for r in runs), "the onnx worker imported torch"
        print(
            f"| {engine} | {medians[engine]:.3f} | "
            f"{statistics.median(r['load'] for r in runs):.2f} | "
            f"{statistics.median(r['peak_rss_gib'] for r in runs):.2f} | "
            f"{sorted({r['detections'] for r in runs})} | {len(runs)} |"
        )
    if "onnx" in medians:
        for engine in (e for e in medians if e != "onnx"):
            print(f"\nonnx / {engine} latency: {medians['onnx'] / medians[engine]:.2f}")


if __name__ == "__main__":
    main()
