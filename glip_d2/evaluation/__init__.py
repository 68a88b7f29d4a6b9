"""Evaluators: COCO (+1 export), LVIS (fixed AP), Flickr30K recall, RefCOCO accuracy, ODinW;
pseudo-label precision / recall against hidden true boxes, image-text retrieval metrics; AP over
category subsets."""

from .build import EVALUATOR_TYPES, build_glip_evaluator
from .category_groups import category_group_metrics, category_subset_ap
from .coco import GLIPCOCOEvaluator, legacy_instances_to_coco_json
from .grounding import FlickrRecallEvaluator, RefExpAccuracyEvaluator, box_iou_xyxy
from .lvis import GLIPLVISEvaluator, top_k_per_category
from .odinw import average_over_datasets
from .pseudo_labels import phrase_category, pseudo_label_quality
from .retrieval import (
    caption_table,
    random_ranking_recalls,
    rerank_scores,
    retrieval_recalls,
    top_k_pairs,
)

__all__ = [
    "EVALUATOR_TYPES",
    "FlickrRecallEvaluator",
    "GLIPCOCOEvaluator",
    "GLIPLVISEvaluator",
    "RefExpAccuracyEvaluator",
    "average_over_datasets",
    "box_iou_xyxy",
    "build_glip_evaluator",
    "caption_table",
    "category_group_metrics",
    "category_subset_ap",
    "legacy_instances_to_coco_json",
    "phrase_category",
    "pseudo_label_quality",
    "random_ranking_recalls",
    "rerank_scores",
    "retrieval_recalls",
    "top_k_pairs",
    "top_k_per_category",
]
