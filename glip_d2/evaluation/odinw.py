"""ODinW-style multi-dataset evaluation: each dataset in turn, then the average."""

import logging
from collections import OrderedDict

import numpy as np

__all__ = ["average_over_datasets"]

logger = logging.getLogger(__name__)


def average_over_datasets(results, dataset_names, task="bbox", metric="AP"):
    """Add ``results["average"][task]`` = the mean of ``metric`` over ``dataset_names``.

    ``results`` is D2's ``{dataset name: {task: {metric: value}}}`` as returned by
    ``DefaultTrainer.test`` for several test sets; datasets whose value is missing or NaN
    (e.g. no predictions at all) are an error, as a silent skip would bias the average.
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
    out["average"] = {task: {metric: avg, "num_datasets": len(values)}}
    logger.info(f"Average {task} {metric} over {len(values)} datasets: {avg:.3f}")
    return out
