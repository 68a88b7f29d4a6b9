"""COCO box AP with the official GLIP export convention."""

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json

__all__ = ["GLIPCOCOEvaluator", "legacy_instances_to_coco_json"]


def legacy_instances_to_coco_json(instances, img_id):
    """COCO result records for boxes in the legacy inclusive convention (``x2 = x + w - 1``).

    The official model exports ``w = x2 - x1 + 1`` and ``h = y2 - y1 + 1`` (spec §6.3); D2's
    :func:`instances_to_coco_json` computes ``x2 - x1``, so one pixel is added back.
    """
    records = instances_to_coco_json(instances, img_id)
    for record in records:
        record["bbox"][2] += 1.0
        record["bbox"][3] += 1.0
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
