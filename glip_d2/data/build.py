"""Mixed-dataset train loader: several DATASETS.TRAIN sets with per-set sampling ratios."""

import itertools
import logging

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from .few_shot import few_shot_subset, is_detection_dataset, log_few_shot
from .mapper import GroundingDatasetMapper

__all__ = [
    "build_grounding_train_loader",
    "caption_pools",
    "get_grounding_dataset_dicts",
    "mixing_repeat_factors",
]

logger = logging.getLogger(__name__)


def get_grounding_dataset_dicts(names, filter_empty=True, few_shot=0, few_shot_seed=0):
    """Load and concatenate several registered sets, tagging records with ``dataset_name``.

    Unlike D2's ``get_detection_dataset_dicts`` this does not require equal ``thing_classes``
    across sets: each record's prompt comes from its own dataset (detection) or caption.
    With ``few_shot`` k > 0 every detection-style set is cut to its official k-shot subset
    (:func:`glip_d2.data.few_shot.few_shot_subset`, seed ``few_shot_seed``); grounding sets
    stay whole.

    Returns:
        (list[dict], list[int]): the records and the size of each set after filtering.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("get_grounding_dataset_dicts: no dataset names given")
    all_records, sizes = [], []
    for name in names:
        records = DatasetCatalog.get(name)
        if not records:
            raise ValueError(f"Dataset {name!r} is empty")
        for r in records:
            r.setdefault("dataset_name", name)
        if few_shot:
            records = _few_shot(name, records, few_shot, few_shot_seed)
        if filter_empty and "annotations" in records[0]:
            records = filter_images_with_only_crowd_annotations(records)
        if not records:
            raise ValueError(f"Dataset {name!r} has no record with a non-crowd annotation")
        all_records.append(records)
        sizes.append(len(records))
    return list(itertools.chain.from_iterable(all_records)), sizes


def _few_shot(name, records, k, seed):
    if not is_detection_dataset(records):
        logger.warning(f"DATASETS.GLIP.FEW_SHOT: {name!r} is not a detection set; kept whole")
        return records
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if not classes:
        raise ValueError(f"DATASETS.GLIP.FEW_SHOT: dataset {name!r} has no thing_classes metadata")
    subset = few_shot_subset(records, k, len(classes), seed)
    log_few_shot(name, records, subset, classes, k, seed)
    return subset


def mixing_repeat_factors(sizes, ratios):
    """Per-record repeat factors so that set ``i`` is drawn with probability ``ratios[i] / sum``.

    A record of set ``i`` gets ``ratios[i] / sum(ratios) * N / sizes[i]`` (``N = sum(sizes)``),
    so an epoch of D2's ``RepeatFactorTrainingSampler`` keeps about ``N`` draws.

    Returns:
        FloatTensor (N,).
    """
    if len(ratios) != len(sizes):
        raise ValueError(
            f"DATASETS.GLIP.TRAIN_RATIOS has {len(ratios)} entries for {len(sizes)} datasets"
        )
    if any(r <= 0 for r in ratios):
        raise ValueError(f"DATASETS.GLIP.TRAIN_RATIOS must be positive, got {list(ratios)}")
    total, weight = sum(sizes), sum(ratios)
    factors = [
        torch.full((n,), r / weight * total / n, dtype=torch.float32)
        for n, r in zip(sizes, ratios, strict=True)
    ]
    return torch.cat(factors)


def caption_pools(records, names):
    """The captions of each pseudo-labelled caption set among ``names`` (metadata
    ``pseudo_label_captions``), for packing: {dataset name: [caption of each record]}."""
    sets = [n for n in names if MetadataCatalog.get(n).get("pseudo_label_captions", False)]
    pools = {n: [] for n in sets}
    for r in records:
        if r.get("dataset_name") in pools:
            pools[r["dataset_name"]].append(r["caption"])
    return pools


def build_grounding_train_loader(cfg, mapper=None):
    """D2's ``build_detection_train_loader`` over the mixed ``DATASETS.TRAIN`` sets.

    Without ``DATASETS.GLIP.TRAIN_RATIOS`` the sets are drawn in proportion to their sizes
    (D2's ``TrainingSampler``); with them, D2's ``RepeatFactorTrainingSampler`` with the
    factors of :func:`mixing_repeat_factors`. The default mapper packs the captions of
    pseudo-labelled caption sets with negatives (``DATASETS.GLIP.PACK_RANDOM_CAPTION_NUMBER``).
    """
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "DATASETS.TRAIN is empty: name the registered training sets (the configs in "
            "configs/transfer/ leave it to you)"
        )
    records, sizes = get_grounding_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        few_shot=cfg.DATASETS.GLIP.FEW_SHOT,
        few_shot_seed=cfg.DATASETS.GLIP.FEW_SHOT_SEED,
    )
    if mapper is None:
        pools = caption_pools(records, cfg.DATASETS.TRAIN)
        mapper = GroundingDatasetMapper(cfg, True, caption_pools=pools)
    ratios = list(cfg.DATASETS.GLIP.TRAIN_RATIOS)
    if ratios:
        sampler = RepeatFactorTrainingSampler(
            mixing_repeat_factors(sizes, ratios), seed=cfg.SEED if cfg.SEED >= 0 else None
        )
    else:
        sampler = TrainingSampler(len(records), seed=cfg.SEED if cfg.SEED >= 0 else None)
    logger.info(
        "Grounding train loader: %s",
        ", ".join(f"{n} ({s} records)" for n, s in zip(cfg.DATASETS.TRAIN, sizes, strict=True)),
    )
    return build_detection_train_loader(
        dataset=DatasetFromList(records, copy=False),
        mapper=mapper,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
