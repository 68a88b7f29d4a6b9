#!/usr/bin/env python
"""Inference latency, peak memory and FLOPs of a GLIP-T-sized model, optionally against a baseline.

GLIP-T sizes (Swin-T, 6 fused DyHead layers, 256 channels, fusion width 2048) with random
weights and the bundled MiniLM text encoder (BERT-base is not available offline), one image of
``--height`` x ``--width`` (800 x 1333: the official test size), eval mode. Cases:

* ``coco``: the 80 COCO names (one prompt); ``three``: a 3-phrase prompt;
* ``lvis40``: the 1203 LVIS v1 names in the official chunks of 40 names
  (``MODEL.GLIP.CHUNK_SIZE 40``); ``lvis``: the same names in the default chunking (as many
  names as fit in one prompt). The backbone runs once, the head once per chunk.

Precisions: ``fp32``, and ``bf16`` through the config options ``--bf16-opts`` (default
``MODEL.GLIP.INFERENCE_DTYPE bfloat16``); a tree whose config lacks such a key skips the case
with a note (``--bf16-autocast`` instead wraps the model call in CPU bf16 autocast, which every
tree accepts). ``--opts KEY VALUE ...`` go to every case's config.

Every measurement runs in its own fresh process (peak RSS is that process's VmHWM): warm-up
(the case itself for one-prompt cases, the first 40 names for LVIS), then ``--runs`` /
``--lvis-runs`` timed runs. ``--baseline REV`` checks REV out in a temporary git worktree and
measures it and the working tree in the same run, alternating process by process (the order
flips every repeat), and prints new / baseline ratios. The achieved GFLOP/s are set against a
2048 x 2048 matmul measured in its own process at the start and the end of the run.

FLOPs come from fvcore through detectron2's ``FlopCountAnalysis`` (one fused multiply-add
counts as one flop), with handles added for ``torchvision::deform_conv2d``, ``aten::baddbmm``
and ``aten::matmul`` of a matrix with a vector; they are counted in the first fp32 process of
each one-prompt case (tracing all chunks of LVIS at once needs tens of GB). GFLOP/s counts two
flops per multiply-add, like the usual matmul figures.

``--stages`` adds where the time goes per stage (module hooks, no code changes needed in the
tree under test): backbone (+FPN), text encoder (tokenizer and encoder), fusion, text layers,
DyConv, prediction layers (the head minus its tower), post-processing, and the rest.

    .venv/bin/python benchmarks/bench_inference.py --baseline 8fb37ee --stages
"""

import argparse
import statistics
import time
from pathlib import Path

import _harness  # benchmarks/_harness.py, next to this script

SCRIPT = Path(__file__).resolve()
THREE_PHRASES = ["person", "dog", "frisbee"]
CASES = {
    "coco": ("COCO (80 names)", "coco", []),
    "three": ("3 phrases", "three", []),
    "lvis40": ("LVIS v1 (1203 names), chunks of 40", "lvis", ["MODEL.GLIP.CHUNK_SIZE", "40"]),
    "lvis": ("LVIS v1 (1203 names), default chunks", "lvis", []),
}
STAGES = [
    "backbone",
    "text encoder",
    "fusion",
    "text layers",
    "DyConv",
    "prediction",
    "post-processing",
    "other",
]


def class_names(vocabulary):
    """The vocabulary as Detectron2's registered metadata gives it (what evaluation prompts)."""
    if vocabulary == "three":
        return list(THREE_PHRASES)
    from detectron2.data import MetadataCatalog

    dataset = {"coco": "coco_2017_val", "lvis": "lvis_v1_val"}[vocabulary]
    return list(MetadataCatalog.get(dataset).thing_classes)


def glip_t_cfg(tree, height, width, opts):
    """GLIP-T from ``tree``'s configs with MiniLM; ``opts`` last (KeyError if unknown)."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(str(Path(tree) / "configs" / "GLIP-T.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bundled-minilm"
    cfg.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 384
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(height, width), max(height, width)
    cfg.merge_from_list(list(opts))
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
    n = 1
    for d in get_shape(outputs[0]):
        n *= d
    return n * inner


def baddbmm_flop(inputs, outputs):
    """FMAs of aten::baddbmm(input, batch1, batch2): the batched product only."""
    from fvcore.nn.jit_handles import get_shape

    b, n, k = get_shape(inputs[1])
    return b * n * k * get_shape(inputs[2])[-1]


def count_fma(model, inputs):
    """fvcore's multiply-add count of one inference and the ops it does not count."""
    import torch
    from detectron2.utils.analysis import FlopCountAnalysis

    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(
            "torchvision::deform_conv2d",
            deform_conv2d_flop,
            "aten::matmul",
            matmul_flop,
            "aten::baddbmm",
            baddbmm_flop,
        )
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.total(), sorted(analysis.unsupported_ops())


class StageTimer:
    """Wall time per stage from module hooks (works on any tree with the usual module names)."""

    def __init__(self, model):
        self.totals = dict.fromkeys(STAGES, 0.0)
        self._starts = {}
        self._tower = 0.0  # tower stages inside the running head call
        parts = {"backbone": model.backbone, "text encoder": model.language_backbone}
        for name, module in model.head.named_modules():
            kind = name.rsplit(".", 1)[-1]
            stage = {"fusion": "fusion", "text_layer": "text layers", "dyconv": "DyConv"}.get(kind)
            if stage and name.startswith("tower."):
                parts[f"{stage}/{name}"] = module
        parts["head"] = model.head
        for key, module in parts.items():
            module.register_forward_pre_hook(lambda m, a, key=key: self._start(key))
            module.register_forward_hook(lambda m, a, o, key=key: self._stop(key))
        # Plain-object pieces: wrap the callables on the instances.
        lang = model.language_backbone
        if hasattr(lang, "tokenize"):
            lang.tokenize = self._wrap(lang.tokenize, "text encoder")
        if hasattr(model, "post_processor"):
            model.post_processor = _Timed(model.post_processor, self, "post-processing")

    def _start(self, key):
        self._starts[key] = time.perf_counter()

    def _stop(self, key):
        elapsed = time.perf_counter() - self._starts.pop(key)
        stage = key.split("/", 1)[0]
        if stage == "head":  # prediction layers = head minus its tower stages
            self.totals["prediction"] += elapsed - self._tower
            self._tower = 0.0
            return
        self.totals[stage] += elapsed
        if "/" in key:
            self._tower += elapsed

    def _wrap(self, fn, stage):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[stage] += time.perf_counter() - start

        return timed

    def take(self, total):
        """Per-stage seconds since the last call, with ``other`` = total - the stages."""
        out = dict(self.totals)
        out["other"] = total - sum(v for k, v in out.items() if k != "other")
        self.totals = dict.fromkeys(STAGES, 0.0)
        self._tower = 0.0
        return out


class _Timed:
    def __init__(self, obj, timer, stage):
        self._obj, self._call = obj, timer._wrap(obj.__call__, stage)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._obj, name)


def _chunk_count(model, cfg, names):
    """Prompts the vocabulary needs, if this tree exposes its chunking (else None)."""
    try:
        from glip_d2.text.prompts import chunk_phrases
    except ImportError:
        try:  # trees before the glip_d2.text package
            from glip_d2.data.prompts import chunk_phrases
        except ImportError:
            return None
    lang = model.language_backbone
    return len(chunk_phrases(lang.tokenizer, names, lang.max_query_len, cfg.MODEL.GLIP.CHUNK_SIZE))


def measure(args):
    """One (case, precision) in this process, against the tree in the working directory."""
    import contextlib

    import torch
    from detectron2.modeling import build_model

    import glip_d2  # noqa: F401  (registers the model)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    label, vocabulary, case_opts = CASES[args.case]
    opts = case_opts + args.opts
    autocast = contextlib.nullcontext
    if args.precision == "bf16":
        if args.bf16_autocast:
            autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        else:
            opts = opts + args.bf16_opts
    try:
        cfg = glip_t_cfg(args.tree, args.height, args.width, opts)
    except (AssertionError, KeyError, ValueError) as err:  # yacs asserts on unknown keys
        return {"skipped": f"config does not accept {' '.join(opts)}: {err}"}
    model = build_model(cfg).eval()
    names = class_names(vocabulary)
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    inputs = [{"image": image, "height": args.height, "width": args.width, "class_names": names}]
    warmup = inputs if vocabulary != "lvis" else [dict(inputs[0], class_names=names[:40])]
    runs = args.lvis_runs if vocabulary == "lvis" else args.runs
    timer = StageTimer(model) if args.stages else None
    times, stages = [], []
    with torch.no_grad(), autocast():
        model(warmup)
        if timer:
            timer.take(0.0)
        for _ in range(runs):
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
            if timer:
                stages.append(timer.take(times[-1]))
    result = {
        "latency": statistics.median(times),
        "runs": runs,
        "chunks": _chunk_count(model, cfg, names),
        "peak_rss_gib": _harness.peak_rss_gib(),  # before FLOP counting traces the model
    }
    if stages:
        result["stages"] = {k: statistics.median(s[k] for s in stages) for k in STAGES}
    # Tracing a vocabulary of several prompts holds every pass's graph at once (18 GB for the
    # 31 chunks of LVIS in 40s): FLOPs are counted for one-prompt cases only.
    if args.count_flops and result["chunks"] == 1:
        if timer:  # a fresh model: the timer's hooks and wrappers must not enter the trace
            model = build_model(cfg).eval()
        result["fma"], result["uncounted_ops"] = count_fma(model, inputs)
    return result


def _fmt(value, spec, missing="n/a"):
    return missing if value is None else format(value, spec)


def _report(args, trees, results, peaks):
    labels = list(trees)
    base = labels[0] if len(labels) > 1 else None
    peak = {p: statistics.median(x[p] for x in peaks) for p in ("fp32", "bf16")}
    print(
        f"GLIP-T sizes, random weights, MiniLM text encoder; one {args.height}x{args.width} "
        f"image; {_harness.conditions(args.threads)}; each measurement in its own process, "
        f"median of the timed runs after a warm-up; {args.processes} process(es) per tree and "
        f"case, alternating. Matmul peak (2048^2, median of start and end): fp32 "
        f"{peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s."
    )
    if args.bf16_autocast:
        print("bf16: the model call wrapped in CPU bf16 autocast.")
    elif "bf16" in args.precisions:
        print(f"bf16: config options {' '.join(args.bf16_opts)}.")
    notes = []
    header = (
        "| case | precision | tree | prompts | runs | latency (s) | peak RSS (GiB) | GFLOPs (FMA) "
    )
    header += "| GFLOP/s | % of matmul peak |"
    if base:
        header += " latency new/baseline | RSS new/baseline |"
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for case in args.cases:
        fma = {t: _first(results, (case, "fp32", t), "fma") for t in labels}
        for precision in args.precisions:
            summary = {}
            for tree in labels:
                runs = results[(case, precision, tree)]
                skipped = [r["skipped"] for r in runs if "skipped" in r]
                if skipped:
                    notes.append(f"{CASES[case][0]}, {precision}, {tree}: skipped ({skipped[0]})")
                    summary[tree] = None
                    continue
                latency = _harness.median_or_none(r["latency"] for r in runs)
                rss = _harness.median_or_none(r["peak_rss_gib"] for r in runs)
                summary[tree] = (latency, rss)
                rate = None if fma[tree] is None else 2 * fma[tree] / 1e9 / latency
                row = (
                    f"| {CASES[case][0]} | {precision} | {tree} | {_fmt(runs[0]['chunks'], 'd')} "
                    f"| {sum(r['runs'] for r in runs)} | {latency:.2f} | {rss:.2f} | "
                    f"{_fmt(fma[tree] and fma[tree] / 1e9, '.0f')} | {_fmt(rate, '.0f')} | "
                    f"{_fmt(rate and 100 * rate / peak[precision], '.0f')} |"
                )
                if base:
                    row += _ratios(summary, base, tree, results, case, precision)
                print(row)
    if notes:
        print("\nNotes:\n" + "\n".join(f"* {n}" for n in notes))
    uncounted = sorted(
        {op for r in results.values() for x in r for op in x.get("uncounted_ops", [])}
    )
    if uncounted:
        print(
            "\nops fvcore does not count (elementwise, norms, indexing, ...): "
            + ", ".join(uncounted)
        )
    if args.stages:
        _report_stages(args, labels, results)


def _first(results, key, field):
    for r in results.get(key, []):
        if r.get(field) is not None:
            return r[field]
    return None


def _ratios(summary, base, tree, results, case, precision):
    if tree == base:
        return " | |"
    ref, ref_note = summary.get(base), ""
    if ref is None and precision != "fp32":  # e.g. a baseline without a bf16 option
        runs = [r for r in results[(case, "fp32", base)] if "latency" in r]
        if runs:
            ref = (
                statistics.median(r["latency"] for r in runs),
                statistics.median(r["peak_rss_gib"] for r in runs),
            )
            ref_note = " (vs baseline fp32)"
    if ref is None or summary[tree] is None:
        return " n/a | n/a |"
    return (
        f" {summary[tree][0] / ref[0]:.2f}{ref_note} | {summary[tree][1] / ref[1]:.2f}{ref_note} |"
    )


def _report_stages(args, labels, results):
    print("\nWhere the time goes (median seconds per stage of the timed runs):")
    for case in args.cases:
        for precision in args.precisions:
            cols = [t for t in labels if any("stages" in r for r in results[(case, precision, t)])]
            if not cols:
                continue
            print(f"\n{CASES[case][0]}, {precision}\n")
            print("| stage | " + " | ".join(cols) + " |")
            print("|---|" + "---:|" * len(cols))
            for stage in STAGES + ["total"]:
                cells = []
                for tree in cols:
                    runs = [r for r in results[(case, precision, tree)] if "stages" in r]
                    values = [
                        r["latency"] if stage == "total" else r["stages"][stage] for r in runs
                    ]
                    cells.append(f"{statistics.median(values):.2f}")
                print(f"| {stage} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REV", help="git revision to compare against")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"]
    )
    parser.add_argument(
        "--bf16-opts", nargs="+", default=["MODEL.GLIP.INFERENCE_DTYPE", "bfloat16"]
    )
    parser.add_argument("--bf16-autocast", action="store_true", help="bf16 = CPU autocast")
    parser.add_argument("--opts", nargs="+", default=[], help="KEY VALUE ... for every case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--runs", type=int, default=3, help="timed runs per process, COCO / 3 phrases"
    )
    parser.add_argument("--lvis-runs", type=int, default=1, help="timed runs per process, LVIS")
    parser.add_argument("--processes", type=int, default=1, help="processes per tree and case")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--stages", action="store_true", help="per-stage time breakdown")
    # Worker-side arguments.
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        return _harness.emit_result(_harness.matmul_peak(args.threads))
    if args.case:
        return _harness.emit_result(measure(args))

    common = [f"--threads={args.threads}", f"--runs={args.runs}", f"--lvis-runs={args.lvis_runs}"]
    common += [f"--height={args.height}", f"--width={args.width}"]
    common += ["--bf16-opts", *args.bf16_opts] + (["--bf16-autocast"] if args.bf16_autocast else [])
    common += (["--stages"] if args.stages else []) + (["--opts", *args.opts] if args.opts else [])
    results = {}
    with _harness.source_trees(args.baseline) as trees:
        peaks = [_harness.run_worker(SCRIPT, _harness.REPO, ["--peak"], args.threads)]
        for repeat in range(args.processes):
            order = list(trees.items())
            order = order if repeat % 2 == 0 else order[::-1]
            for case in args.cases:
                for precision in args.precisions:
                    for label, tree in order:
                        extra = ["--case", case, "--precision", precision, "--tree", str(tree)]
                        if repeat == 0 and precision == "fp32" and not args.no_flops:
                            extra.append("--count-flops")
                        result = _harness.run_worker(SCRIPT, tree, common + extra, args.threads)
                        results.setdefault((case, precision, label), []).append(result)
                        print(f"done: {case} {precision} {label}: {result}", flush=True)
        peaks.append(_harness.run_worker(SCRIPT, _harness.REPO, ["--peak"], args.threads))
        _report(args, trees, results, peaks)


if __name__ == "__main__":
    main()
