"""COCO box AP with the official GLIP export convention."""

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json

from ..structures import legacy_xyxy_to_xywh
from .category_groups import category_group_metrics

__all__ = ["GLIPCOCOEvaluator", "legacy_instances_to_coco_json"]


def legacy_instances_to_coco_json(instances, img_id):
    """COCO result records for boxes in the legacy inclusive convention (``x2 = x + w - 1``).

    The official model exports ``w = x2 - x1 + 1`` and ``h = y2 - y1 + 1`` (microsoft/GLIP
    maskrcnn_benchmark/data/datasets/evaluation/coco/coco_eval.py,
    ``prepare_for_coco_detection``, through ``BoxList.convert("xywh")``); D2's
    :func:`instances_to_coco_json` computes ``x2 - x1``, so its boxes are replaced by
    :func:`glip_d2.structures.legacy_xyxy_to_xywh` of the same boxes.
    """
    records = instances_to_coco_json(instances, img_id)
    if records:
        xywh = legacy_xyxy_to_xywh(instances.pred_boxes.tensor.double()).tolist()
        for record, box in zip(records, xywh, strict=True):
            record["bbox"] = box
    return records


class GLIPCOCOEvaluator(COCOEvaluator):
    """D2's :class:`COCOEvaluator` (official pycocotools by default) with the +1 box export.

    The model's ``pred_classes`` are phrase indices of a prompt built from the dataset's
    ``thing_classes`` in contiguous order, so D2's contiguous -> json id mapping applies as is.
    A dataset whose metadata has ``eval_category_groups`` (``{group: [class name, ...]}``) also
    gets AP / AP50 over each group's categories alone (:mod:`.category_groups`).
    """

    def __init__(self, dataset_name, tasks=("bbox",), distributed=True, output_dir=None, **kwargs):
        kwargs.setdefault("use_fast_impl", False)  # no detectron2._C in pure-Python installs
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs, strict=True):
            if "instances" not in out:
                continue
            instances = out["instances"].to(self._cpu_device)
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "instances": legacy_instances_to_coco_json(instances, inp["image_id"]),
                }
            )

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        """D2's metrics, plus ``AP-<group>``, ``AP50-<group>`` and ``AP50-<name>`` of the
        metadata's ``eval_category_groups`` (box AP only)."""
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        groups = self._metadata.get("eval_category_groups", None)
        if groups and iou_type == "bbox":
            id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
            if not class_names or not id_map:
                raise ValueError(
                    f"dataset {self._metadata.name!r} has eval_category_groups but no "
                    "thing_classes / thing_dataset_id_to_contiguous_id to find their ids"
                )
            to_id = {v: k for k, v in id_map.items()}
            name_to_id = {n: to_id[i] for i, n in enumerate(class_names)}
            group_results = category_group_metrics(coco_eval, groups, name_to_id)
            self._logger.info(
                "Category groups (%s): %s",
                iou_type,
                ", ".join(f"{k} {v:.1f}" for k, v in group_results.items()),
            )
            results.update(group_results)
        return results
