"""COCO box AP with the official GLIP export convention."""

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json

from ..structures import legacy_xyxy_to_xywh

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
