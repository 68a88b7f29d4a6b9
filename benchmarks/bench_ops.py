#!/usr/bin/env python
"""Kernel timings at GLIP-T sizes: the deformable conv and the fusion attention, fast vs reference.

* ``deform``: one modulated deformable 3x3 conv (256 -> 256 channels, stride 1, random offsets
  of a few pixels, batch 1) per pyramid level of an 800 x 1333 image (P3 100 x 167 ... P7
  7 x 11), ``impl`` "fast" (glip_d2/modeling/deform_conv.py) vs "torchvision"
  (``torchvision.ops.deform_conv2d``). GFLOP/s counts 2 flops per multiply-add of the conv.
* ``fusion``: one ``BiMultiHeadAttention`` (GLIP-T: visual 256, text 768, attention 2048 in 8
  heads) over the 22 300 visual tokens of all levels and L text tokens, "direct" vs
  "reassociated", eval mode.

Each (op, variant, precision) runs in its own fresh process, the variants alternating, and
every process times all sizes (``--inner`` runs after one warm-up run each); the table gives
the median over ``--repeats`` processes. bf16 means CPU autocast (the fast deformable conv then
samples and multiplies in bf16; torchvision's op stays fp32). ``--bf16-error`` prints the
differences of a DyConv layer's outputs in bf16 vs fp32 instead.

    .venv/bin/python benchmarks/bench_ops.py --threads 2 --repeats 5
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]  # 800 x 1333 at strides 8..128
VARIANTS = {"deform": ("torchvision", "fast"), "fusion": ("direct", "reassociated")}


def _time(fn, inner):
    fn()  # warm-up: allocator, weight reordering, thread pool
    times = []
    for _ in range(inner):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _autocast(dtype):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def measure_deform(impl, dtype, args):
    import torch

    from glip_d2.modeling.dyconv import ModulatedDeformConv3x3

    torch.manual_seed(0)
    conv = ModulatedDeformConv3x3(256, 256, impl=impl, low_precision=True).eval()
    out = {}
    for h, w in args.levels:
        x = torch.randn(1, 256, h, w)
        offset, mask = 2 * torch.randn(1, 18, h, w), torch.rand(1, 9, h, w)
        with torch.no_grad(), _autocast(dtype):
            out[f"{h}x{w}"] = _time(lambda x=x, o=offset, m=mask: conv(x, o, m), args.inner)
    return out


def measure_fusion(impl, dtype, args):
    import torch

    from glip_d2.modeling.fusion import BiMultiHeadAttention

    torch.manual_seed(0)
    attn = BiMultiHeadAttention(256, 768, 2048, 8, impl=impl).eval()
    num_v = sum(h * w for h, w in args.levels)
    v = torch.randn(1, num_v, 256)
    out = {}
    for length in args.lengths:
        l = torch.randn(1, length, 768)
        mask = torch.ones(1, length, dtype=torch.long)
        with torch.no_grad(), _autocast(dtype):
            out[f"L={length}"] = _time(lambda l=l, m=mask: attn(v, l, m), args.inner)
    return out


def dyconv_bf16_error(args):
    """Max abs difference of one DyConv layer's outputs, CPU bf16 autocast vs fp32, per level.

    GLIP-T's layer (256 channels, deformable convs, the coarse-offset quirk) on unit-normal
    features of all levels, once freshly initialised (offsets near 0) and once with random
    weights whose offsets are about a pixel; bf16 with the fast deformable conv in bf16
    (DEFORM_CONV_LOW_PRECISION) and, for comparison, in fp32.
    """
    import torch

    from glip_d2.modeling.dyconv import DyConv

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feats = [torch.randn(1, 256, h, w) for h, w in args.levels]
    rows = []
    for init in ("fresh", "random"):
        torch.manual_seed(1)
        layer = DyConv(256, 256, deform_conv_low_precision=True).eval()
        if init == "random":
            with torch.no_grad():
                for p in layer.parameters():
                    p.copy_(0.05 * torch.randn(p.shape))
                layer.offset.weight.mul_(0.5)
        with torch.no_grad():
            exact = layer(feats)
            for low_precision in (True, False):
                for m in layer.modules():
                    if hasattr(m, "low_precision"):
                        m.low_precision = low_precision
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    low = layer(feats)
                diffs = [
                    (a.float() - b).abs().max().item() for a, b in zip(low, exact, strict=True)
                ]
                scale = [b.abs().max().item() for b in exact]
                rows.append((init, low_precision, diffs, scale))
    print("| weights | deformable conv | " + " | ".join(f"{h}x{w}" for h, w in args.levels) + " |")
    print("|---|---|" + "---:|" * len(args.levels))
    for init, low_precision, diffs, scale in rows:
        cells = " | ".join(f"{d:.3g} (of {s:.3g})" for d, s in zip(diffs, scale, strict=True))
        print(f"| {init} | {'bf16' if low_precision else 'fp32'} | {cells} |")


def _worker(args):
    import torch

    torch.set_num_threads(args.threads)
    fn = measure_deform if args.op == "deform" else measure_fusion
    print("RESULT " + json.dumps(fn(args.variant, args.dtype, args)))


def _run_worker(op, variant, dtype, args):
    cmd = [sys.executable, __file__, "--op", op, "--variant", variant, "--dtype", dtype]
    cmd += [f"--threads={args.threads}", f"--inner={args.inner}"]
    cmd += ["--levels", *[f"{h}x{w}" for h, w in args.levels]]
    cmd += ["--lengths", *map(str, args.lengths)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"benchmark worker {op}/{variant}/{dtype} failed")
    return json.loads(lines[-1][len("RESULT ") :])


def _level(text):
    h, w = text.split("x")
    return int(h), int(w)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=["deform", "fusion"], choices=VARIANTS)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="processes per variant")
    parser.add_argument("--inner", type=int, default=3, help="timed runs per size and process")
    parser.add_argument("--levels", nargs="+", type=_level, default=LEVELS, help="HxW ...")
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 190, 12])
    parser.add_argument(
        "--bf16-error", action="store_true", help="DyConv bf16 vs fp32 differences instead"
    )
    parser.add_argument("--op", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.op:
        return _worker(args)
    if args.bf16_error:
        return dyconv_bf16_error(args)

    import torch

    results = {}  # (op, dtype, variant) -> list of {size: seconds}
    for _ in range(args.repeats):
        for op in args.ops:
            for dtype in args.dtypes:
                for variant in VARIANTS[op]:
                    results.setdefault((op, dtype, variant), []).append(
                        _run_worker(op, variant, dtype, args)
                    )
    load = os.getloadavg()
    print(
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{args.threads} torch threads, torch {torch.__version__}; median over {args.repeats} "
        f"processes per variant (alternating), each the median of {args.inner} runs after a "
        f"warm-up; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    for op in args.ops:
        ref_name, new_name = VARIANTS[op]
        print(f"| {op} | precision | {ref_name} (ms) | {new_name} (ms) | ratio | GFLOP/s new |")
        print("|---|---|---:|---:|---:|---:|")
        for dtype in args.dtypes:
            ref, new = results[(op, dtype, ref_name)], results[(op, dtype, new_name)]
            for size in ref[0]:
                t_ref = statistics.median(r[size] for r in ref)
                t_new = statistics.median(r[size] for r in new)
                rate = ""
                if op == "deform":
                    h, w = _level(size)
                    rate = f"{2 * 256 * 256 * 9 * h * w / t_new / 1e9:.0f}"
                print(
                    f"| {size} | {dtype} | {t_ref * 1e3:.1f} | {t_new * 1e3:.1f} | "
                    f"{t_new / t_ref:.2f} | {rate} |"
                )
        print()


if __name__ == "__main__":
    main()
