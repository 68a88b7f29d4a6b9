"""LVIS box AP: D2's evaluator, plus the MDETR "fixed AP" protocol (microsoft/GLIP
maskrcnn_benchmark/data/datasets/evaluation/lvis/lvis_eval.py, ``LvisEvaluatorFixedAP``)."""

import itertools
from collections import defaultdict

import numpy as np
from detectron2.evaluation import LVISEvaluator

__all__ = ["GLIPLVISEvaluator", "top_k_per_category"]

FIXED_AP_TOPK = 10000  # detections kept per category over the whole split

# lvis 0.5.3 (the latest release) still calls ``np.float``, an alias numpy 1.24 removed; the
# alias meant the builtin float, so restoring it changes nothing else.
if not hasattr(np, "float"):
    np.float = float


def top_k_per_category(records, k=FIXED_AP_TOPK):
    """Keep the ``k`` highest-scoring result records of each category (input order otherwise)."""
    by_cat = defaultdict(list)
    for idx, rec in enumerate(records):
        by_cat[rec["category_id"]].append(idx)
    keep = set()
    for idxs in by_cat.values():
        idxs.sort(key=lambda i: -records[i]["score"])
        keep.update(idxs[:k])
    return [rec for i, rec in enumerate(records) if i in keep]


class GLIPLVISEvaluator(LVISEvaluator):
    """LVIS evaluation of the model's predictions.

    Boxes are exported as D2 does, ``w = x2 - x1`` (the official LVIS path has no +1).
    Long vocabularies are chunked by the model (``class_names`` + ``MODEL.GLIP.CHUNK_SIZE``);
    its outputs already hold every chunk's detections with global class indices.

    With ``fixed_ap=True``: keep the top :data:`FIXED_AP_TOPK` detections per category over the
    split and evaluate without a per-image cap (``max_dets = -1``); otherwise standard AP with
    ``max_dets_per_image`` (LVIS default 300).
    """

    def __init__(
        self,
        dataset_name,
        tasks=("bbox",),
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=None,
        fixed_ap=False,
        fixed_ap_topk=FIXED_AP_TOPK,
    ):
        if fixed_ap:
            max_dets_per_image = -1
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
        )
        self._fixed_ap = fixed_ap
        self._fixed_ap_topk = fixed_ap_topk

    def _eval_predictions(self, predictions):
        if not self._fixed_ap:
            return super()._eval_predictions(predictions)
        records = list(itertools.chain(*[p.get("instances", []) for p in predictions]))
        kept = top_k_per_category(records, self._fixed_ap_topk)
        self._logger.info(
            f"LVIS fixed AP: kept {len(kept)} of {len(records)} detections "
            f"(top {self._fixed_ap_topk} per category)"
        )
        return super()._eval_predictions([{"instances": kept}])
