"""Box AP / AP50 over a subset of a dataset's categories, from one COCO evaluation.

glip_synth's held-out split scores all 20 categories of its images, 17 of which were seen in
training; its three unseen colour-shape combinations alone are the test of compositional
grounding. A dataset names such subsets in its metadata ``eval_category_groups``
(``{group: [class name, ...]}``) and :class:`GLIPCOCOEvaluator` adds, per group,
``AP-<group>``, ``AP50-<group>`` and ``AP50-<name>`` for its members (D2 already reports
``AP-<name>``).

Exactness: pycocotools matches detections to ground truth per (image, category) and
accumulates precision per category, so a category's entries of ``eval["precision"]``
(shape ``(T iou thresholds, R recall points, K categories, A area ranges, M max dets)``) do
not depend on which other categories are evaluated. The subset's AP is computed as
``COCOeval.summarize`` computes AP (the mean of the entries > -1 of
``precision[:, :, k, area "all", last maxDets]``), over the subset's ``k`` only: the figure
``COCOeval`` gives with ``params.catIds`` set to the subset. As every category with ground truth
fills all its T x R entries (and one without fills none, -1), it is also the mean of the
members' per-category APs, skipping members without ground truth.
"""

import math

import numpy as np

__all__ = ["category_subset_ap", "category_group_metrics"]


def _mean_valid(precision):
    valid = precision[precision > -1]
    return float(np.mean(valid) * 100) if valid.size else float("nan")


def category_subset_ap(coco_eval, cat_ids):
    """AP and AP50 (in %) of an accumulated ``COCOeval`` over the json category ids ``cat_ids``.

    Returns ``{"AP": .., "AP50": .., "per_category": {cat_id: {"AP": .., "AP50": ..}}}``; NaN
    where the categories have no ground truth in the evaluated images. Uses area range "all"
    and the last (largest) ``params.maxDets``, as D2's per-category AP and COCO's AP do.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    index = {c: k for k, c in enumerate(params.catIds)}
    missing = [c for c in cat_ids if c not in index]
    if missing:
        raise ValueError(
            f"category ids {missing} are not among the evaluated ones {list(params.catIds)}"
        )
    if not cat_ids:
        raise ValueError("category_subset_ap needs at least one category id")
    iou50 = np.where(np.isclose(params.iouThrs, 0.5))[0]
    if iou50.size != 1:
        raise ValueError(f"COCOeval IoU thresholds {list(params.iouThrs)} lack 0.5")
    area_all = params.areaRngLbl.index("all")
    ks = [index[c] for c in cat_ids]
    sub = precision[:, :, ks, area_all, -1]  # (T, R, len(cat_ids))
    per_category = {
        c: {"AP": _mean_valid(sub[:, :, j]), "AP50": _mean_valid(sub[iou50[0], :, j])}
        for j, c in enumerate(cat_ids)
    }
    return {
        "AP": _mean_valid(sub),
        "AP50": _mean_valid(sub[iou50[0]]),
        "per_category": per_category,
    }


def category_group_metrics(coco_eval, groups, name_to_cat_id):
    """Flat D2-style result keys for the named category groups.

    ``groups``: ``{group: [class name, ...]}``; ``name_to_cat_id``: class name -> json category
    id. ``coco_eval`` None (the model returned no detection) gives NaN for every key, as D2's
    COCOEvaluator does for its own metrics. Returns ``{"AP-<group>": .., "AP50-<group>": ..,
    "AP50-<name>": ..}``.
    """
    out = {}
    for group, names in groups.items():
        unknown = [n for n in names if n not in name_to_cat_id]
        if unknown:
            raise ValueError(
                f"eval_category_groups[{group!r}] names {unknown}, which are not among the "
                f"dataset's thing_classes {sorted(name_to_cat_id)}"
            )
        if coco_eval is None:
            res = {"AP": math.nan, "AP50": math.nan, "per_category": {}}
        else:
            res = category_subset_ap(coco_eval, [name_to_cat_id[n] for n in names])
        out[f"AP-{group}"] = res["AP"]
        out[f"AP50-{group}"] = res["AP50"]
        for n in names:
            out[f"AP50-{n}"] = res["per_category"].get(name_to_cat_id[n], {}).get("AP50", math.nan)
    return out
