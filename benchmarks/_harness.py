"""Shared machinery of the benchmark scripts: source trees, worker processes, conditions.

A benchmark compares source trees: the working tree and, with ``--baseline REV``, a temporary
``git worktree`` of REV. Every measurement runs in a fresh worker process (this repository's
benchmark script, with ``PYTHONPATH`` and the working directory set to the tree under test, so
it imports that tree's ``glip_d2`` and reads its configs); the worker prints one line
``RESULT {json}`` and reports its own peak RSS.
"""

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "


@contextlib.contextmanager
def source_trees(baseline=None):
    """Yields {label: path}: "new" (the working tree) and, with a revision, "baseline".

    The baseline is checked out (detached) in a temporary git worktree, removed on exit.
    """
    trees = {}
    tmp = None
    try:
        if baseline:
            rev = subprocess.run(
                ["git", "rev-parse", "--short", f"{baseline}^{{commit}}"],
                cwd=REPO,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            tmp = Path(tempfile.mkdtemp(prefix=f"glip_d2_baseline_{rev}_"))
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tmp / "tree"), rev],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            trees[f"baseline {rev}"] = tmp / "tree"
        trees["new"] = REPO
        yield trees
    finally:
        if tmp is not None:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tmp / "tree")],
                cwd=REPO,
                capture_output=True,
            )
            shutil.rmtree(tmp, ignore_errors=True)


def run_worker(script, tree, worker_args, threads, env=None):
    """Run ``script`` (a path) with ``worker_args`` against ``tree``; returns its RESULT dict.

    The dict gains ``glip_d2_file`` checks: a worker that imported another tree's package
    is an error, not a silent mismeasurement.
    """
    environ = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
    environ.update(env or {})
    cmd = [sys.executable, str(script), *worker_args]
    proc = subprocess.run(cmd, cwd=tree, env=environ, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker failed in {tree}: {' '.join(cmd)}")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    imported = Path(result.get("glip_d2_file", tree)).resolve()
    if not imported.is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"worker for {tree} imported glip_d2 from {imported}")
    return result


def emit_result(result):
    """Worker side: print the RESULT line, with the package location and (unless the result
    has one already) this process's peak RSS."""
    import glip_d2

    result = dict({"peak_rss_gib": peak_rss_gib()}, **result, glip_d2_file=glip_d2.__file__)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def peak_rss_gib():
    """This process's peak resident set size (VmHWM), GiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak(threads, size=2048, runs=5):
    """Worker side: GFLOP/s of a size x size matmul in fp32 and bf16 (median of ``runs``)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[name] = 2 * size**3 / statistics.median(times) / 1e9
    return out


def conditions(threads):
    """One line: CPU, cores, threads, torch version and the load average now."""
    import torch

    load = os.getloadavg()
    return (
        f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores), "
        f"{threads} torch threads, torch {torch.__version__}, load average now "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"
    )


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
