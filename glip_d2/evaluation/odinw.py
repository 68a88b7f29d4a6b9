"""ODinW-style multi-dataset evaluation: each dataset in turn, then the average."""

import logging
from collections import OrderedDict

import numpy as np
from tabulate import tabulate

__all__ = ["average_over_datasets", "odinw_table"]

logger = logging.getLogger(__name__)

# Columns of the per-set table, when the results have them (D2's COCO bbox metrics).
_TABLE_METRICS = ("AP", "AP50", "AP75")


def average_over_datasets(results, dataset_names, task="bbox", metric="AP"):
    """Add ``results["average"][task]`` = the mean of ``metric`` over ``dataset_names``.

    ``results`` is D2's ``{dataset name: {task: {metric: value}}}`` as returned by
    ``DefaultTrainer.test`` for several test sets; datasets whose value is missing or NaN
    (e.g. no predictions at all) are an error, as a silent skip would bias the average.
    The average of every other metric of :data:`_TABLE_METRICS` that all sets report is added
    too, and the per-set table with its average row is logged.
    """
    values = OrderedDict()
    for name in dataset_names:
        try:
            values[name] = float(results[name][task][metric])
        except KeyError as e:
            raise KeyError(f"no {task}/{metric} result for dataset {name!r}") from e
        if not np.isfinite(values[name]):
            raise ValueError(f"{task}/{metric} of dataset {name!r} is {values[name]}")
    out = OrderedDict(results)
    avg = float(np.mean(list(values.values()))) if values else float("nan")
    average = {metric: avg, "num_datasets": len(values)}
    for extra in _TABLE_METRICS:
        per_set = [results[n][task].get(extra) for n in dataset_names]
        if extra != metric and values and all(v is not None for v in per_set):
            average[extra] = float(np.mean(per_set))
    out["average"] = {task: average}
    logger.info(
        f"Average {task} {metric} over {len(values)} datasets: {avg:.3f}\n"
        + odinw_table(out, dataset_names, task)
    )
    return out


def odinw_table(results, dataset_names, task="bbox"):
    """A pipe table: one row per dataset and an ``average`` row (if ``results`` has one)."""
    columns = [m for m in _TABLE_METRICS if all(m in results[n][task] for n in dataset_names)]
    rows = [[n] + [results[n][task][m] for m in columns] for n in dataset_names]
    if "average" in results:
        rows.append(
            [f"average ({len(dataset_names)})"]
            + [results["average"][task].get(m, float("nan")) for m in columns]
        )
    return tabulate(rows, headers=["dataset"] + columns, tablefmt="pipe", floatfmt=".2f")
