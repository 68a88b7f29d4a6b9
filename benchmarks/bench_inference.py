#!/usr/bin/env python
"""Inference latency, peak memory and FLOPs of a GLIP-T-sized model on this machine.

GLIP-T sizes (Swin-T, 6 fused DyHead layers, 256 channels, fusion width 2048) with random
weights and the bundled MiniLM text encoder (BERT-base is not available offline), one image of
``--height`` x ``--width`` (800 x 1333: the official test size), fp32, eval mode. Two
vocabularies: the 80 COCO class names (one prompt) and the 1203 LVIS v1 names (chunked into
several prompts; the backbone and FPN run once). Each vocabulary runs in its own process, so
its peak RSS is its own. Prints a markdown table with the conditions.

FLOPs come from fvcore through detectron2's ``FlopCountAnalysis`` (one fused multiply-add
counts as one flop), with handles added for ``torchvision::deform_conv2d``, which fvcore does
not know, and for ``aten::matmul`` of a matrix with a vector. GFLOP/s counts two flops per
multiply-add, like the usual matmul figures.

    .venv/bin/python benchmarks/bench_inference.py --threads 2 --runs 3 --lvis-runs 1
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCABULARIES = {"coco": "COCO (80 names)", "lvis": "LVIS v1 (1203 names)"}


def class_names(vocabulary):
    """The vocabulary as Detectron2's registered metadata gives it (what evaluation prompts)."""
    from detectron2.data import MetadataCatalog

    dataset = {"coco": "coco_2017_val", "lvis": "lvis_v1_val"}[vocabulary]
    return list(MetadataCatalog.get(dataset).thing_classes)


def glip_t_cfg(height, width):
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "GLIP-T.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bundled-minilm"
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 384
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(height, width), max(height, width)
    return cfg


def deform_conv2d_flop(inputs, outputs):
    """FMAs of torchvision::deform_conv2d: every output value sums C_in/groups x kh x kw."""
    from fvcore.nn.jit_handles import get_shape

    weight = get_shape(inputs[1])  # (C_out, C_in / groups, kh, kw)
    out = get_shape(outputs[0])  # (N, C_out, H, W)
    per_output = weight[1] * weight[2] * weight[3]
    return out[0] * out[1] * out[2] * out[3] * per_output


def matmul_flop(inputs, outputs):
    """FMAs of aten::matmul, including matrix @ vector (fvcore's handle assumes 2-D+ operands)."""
    from fvcore.nn.jit_handles import get_shape

    inner = get_shape(inputs[0])[-1]
    out = get_shape(outputs[0])
    n = 1
    for d in out:
        n *= d
    return n * inner


def measure(vocabulary, args):
    """One vocabulary in this process: (median latency s, peak RSS GiB, FMAs, chunk count)."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import FlopCountAnalysis

    import glip_d2  # noqa: F401  (registers the model)
    from glip_d2.text.prompts import chunk_phrases

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = glip_t_cfg(args.height, args.width)
    model = build_model(cfg).eval()
    names = class_names(vocabulary)
    lang = model.language_backbone
    chunks = chunk_phrases(lang.tokenizer, names, lang.max_query_len, cfg.MODEL.GLIP.CHUNK_SIZE)
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    inputs = [{"image": image, "height": args.height, "width": args.width, "class_names": names}]
    # Warm-up (allocator, tokenizer caches) on the first prompt's names only: one LVIS pass
    # costs as much as a dozen COCO passes.
    warmup = [dict(inputs[0], class_names=[names[i] for i in chunks[0]])]
    runs = args.runs if vocabulary == "coco" else args.lvis_runs
    times = []
    with torch.no_grad():
        model(warmup)
        for _ in range(runs):
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    flops, uncounted = None, []
    if not args.no_flops:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, inputs)
            analysis.set_op_handle(
                "torchvision::deform_conv2d", deform_conv2d_flop, "aten::matmul", matmul_flop
            )
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            flops = analysis.total()
            uncounted = sorted(analysis.unsupported_ops())
    return {
        "latency": statistics.median(times),
        "rss": rss,
        "fma": flops,
        "chunks": len(chunks),
        "runs": runs,
        "uncounted_ops": uncounted,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed runs, COCO vocabulary")
    parser.add_argument("--lvis-runs", type=int, default=1, help="timed runs, LVIS vocabulary")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--vocabulary", choices=sorted(VOCABULARIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vocabulary:  # worker: print one JSON line
        print(json.dumps(measure(args.vocabulary, args)))
        return

    import torch

    rows = []
    for vocabulary, label in VOCABULARIES.items():
        cmd = [sys.executable, __file__, *sys.argv[1:], "--vocabulary", vocabulary]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
        rows.append((label, json.loads(out.strip().splitlines()[-1])))

    print(
        f"GLIP-T sizes, random weights, MiniLM text encoder; one {args.height}x{args.width} "
        f"image; fp32 CPU ({platform.processor() or platform.machine()}), {args.threads} "
        f"threads; median of the timed runs after a one-prompt warm-up; torch {torch.__version__}"
    )
    print("| vocabulary | prompts | runs | latency (s) | peak RSS (GiB) | GFLOPs (FMA) | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        fma = "n/a" if r["fma"] is None else f"{r['fma'] / 1e9:.0f}"
        rate = "n/a" if r["fma"] is None else f"{2 * r['fma'] / 1e9 / r['latency']:.0f}"
        print(
            f"| {label} | {r['chunks']} | {r['runs']} | {r['latency']:.2f} | {r['rss']:.2f} | "
            f"{fma} | {rate} |"
        )
    uncounted = sorted({op for _, r in rows for op in r["uncounted_ops"]})
    print(f"ops fvcore does not count (elementwise, norms, indexing, ...): {', '.join(uncounted)}")


if __name__ == "__main__":
    main()
