"""Pick the evaluator of a test set from its metadata ``evaluator_type``."""

import os

from detectron2.data import MetadataCatalog

from .coco import GLIPCOCOEvaluator
from .grounding import FlickrRecallEvaluator, RefExpAccuracyEvaluator
from .lvis import GLIPLVISEvaluator

__all__ = ["EVALUATOR_TYPES", "build_glip_evaluator"]

# evaluator_type -> what it measures; "odinw" datasets are COCO-format detection sets whose
# APs are also averaged by Trainer.test (see glip_d2.evaluation.odinw).
EVALUATOR_TYPES = ("coco", "odinw", "lvis", "flickr", "refcoco", "refexp")


def build_glip_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator for ``dataset_name``: COCO AP (+1 export), LVIS AP (fixed AP when
    ``TEST.GLIP.LVIS_FIXED_AP``), Flickr recall or RefCOCO accuracy."""
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    if kind in ("coco", "odinw"):
        return GLIPCOCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )
    if kind == "lvis":
        return GLIPLVISEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            fixed_ap=cfg.TEST.GLIP.LVIS_FIXED_AP,
        )
    if kind == "flickr":
        return FlickrRecallEvaluator(dataset_name, gt_type=cfg.TEST.GLIP.FLICKR_GT_TYPE)
    if kind in ("refcoco", "refexp"):
        return RefExpAccuracyEvaluator(dataset_name)
    if kind == "retrieval":
        raise ValueError(
            f"dataset {dataset_name!r} is a caption retrieval set: GLIPTrainer.test evaluates it "
            "with glip_d2.engine.evaluate_retrieval (image and caption embeddings), not with a "
            "DatasetEvaluator over detections"
        )
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type={kind!r} in its metadata; glip_d2 "
        f"evaluates one of {EVALUATOR_TYPES}"
    )
