"""Dataset registrations: COCO-format sets, ODinW, MDETR grounding sets, regions, captions,
glip_synth, caption retrieval sets."""

from . import builtin, retrieval  # noqa: F401  registers the predefined datasets
from .builtin import register_all_glip, register_glip_novel, register_glip_synth
from .coco import register_grounding_coco
from .flickr_entities import attach_flickr_phrase_types, read_flickr_sentences
from .lvis import lvis_v1_official_names, register_lvis_evaluation
from .mdetr import load_mdetr_json, register_mdetr_grounding
from .odinw import odinw_dataset_names, register_odinw
from .regions import (
    load_pseudo_label_captions,
    load_region_descriptions,
    register_pseudo_label_captions,
    register_pseudo_label_sets,
    register_region_descriptions,
    screen_teacher_boxes,
)
from .retrieval import (
    load_caption_retrieval_json,
    load_grounding_captions,
    register_caption_retrieval,
)

__all__ = [
    "attach_flickr_phrase_types",
    "load_caption_retrieval_json",
    "load_grounding_captions",
    "load_mdetr_json",
    "load_pseudo_label_captions",
    "load_region_descriptions",
    "lvis_v1_official_names",
    "odinw_dataset_names",
    "read_flickr_sentences",
    "register_all_glip",
    "register_caption_retrieval",
    "register_glip_novel",
    "register_glip_synth",
    "register_grounding_coco",
    "register_lvis_evaluation",
    "register_mdetr_grounding",
    "register_odinw",
    "register_pseudo_label_captions",
    "register_pseudo_label_sets",
    "register_region_descriptions",
    "screen_teacher_boxes",
]
