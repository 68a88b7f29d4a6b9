"""Caption retrieval evaluation (``evaluator_type`` "retrieval"): image->text and text->image
R@1/5/10 from the X-VLM ITC embeddings, optionally re-ranked by ITM over each query's top K.

``GLIPTrainer.test`` sends the retrieval sets of ``DATASETS.TEST`` here and the other sets to
Detectron2's evaluators. Under DDP the images are sharded like D2's inference and the embeddings
gathered; every process then scores the captions and gets the same numbers.
"""

import logging
from collections import OrderedDict

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..data.retrieval_mapper import RetrievalImageMapper
from ..evaluation.retrieval import (
    caption_table,
    random_ranking_recalls,
    rerank_scores,
    retrieval_recalls,
    top_k_pairs,
)

__all__ = [
    "is_retrieval_set",
    "split_retrieval_sets",
    "evaluate_retrieval",
    "add_retrieval_results",
]

logger = logging.getLogger(__name__)

TEXT_BATCH = 64  # captions per text-encoder pass


def is_retrieval_set(name):
    return MetadataCatalog.get(name).get("evaluator_type", None) == "retrieval"


def split_retrieval_sets(cfg):
    """(cfg with only the non-retrieval DATASETS.TEST, names of the retrieval sets)."""
    retrieval = [d for d in cfg.DATASETS.TEST if is_retrieval_set(d)]
    if not retrieval:
        return cfg, []
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = tuple(d for d in cfg.DATASETS.TEST if d not in retrieval)
    cfg.freeze()
    return cfg, retrieval


def add_retrieval_results(results, cfg, model, detection_sets, retrieval_sets):
    """D2 ``test`` results of ``detection_sets`` plus each retrieval set's, D2's layout (one
    set: its results unwrapped)."""
    if not retrieval_sets:
        return results
    if len(detection_sets) == 1:
        results = OrderedDict([(detection_sets[0], results)])
    results = OrderedDict(results)
    for name in retrieval_sets:
        results[name] = evaluate_retrieval(cfg, model, name)
    return list(results.values())[0] if len(results) == 1 else results


def _pyramid(model, batch):
    images = model.preprocess_image(batch)
    feats = model.backbone(images.tensor)
    return [feats[f] for f in model.in_features], images.image_sizes


def _all_rows(local, count):
    """{index: value} of every process -> list of ``count`` values in index order."""
    merged = {}
    for part in comm.all_gather(local):
        merged.update(part)
    missing = sorted(set(range(count)) - set(merged))
    if missing:
        raise RuntimeError(f"retrieval evaluation lost records {missing[:10]}")
    return [merged[i] for i in range(count)]


@torch.no_grad()
def evaluate_retrieval(cfg, model, dataset_name):
    """R@K of ``dataset_name`` (a registered retrieval set) in percent.

    Returns:
        dict: ``{"retrieval": ITC recalls, "retrieval_itm": ITM re-ranked recalls (with
        TEST.GLIP.RETRIEVAL_ITM_TOP_K > 0), "retrieval_random": a random ranking's}``, each
        with ``i2t_R@{1,5,10}``, ``t2i_R@{1,5,10}`` and ``mean_R``.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    xvlm = getattr(model, "xvlm", None)
    if xvlm is None or not hasattr(xvlm, "visual_proj"):
        raise ValueError(
            f"retrieval set {dataset_name!r} needs the model's ITC embeddings: set "
            "MODEL.GLIP.XVLM.ITC_WEIGHT (or ITC_BOX_WEIGHT) > 0 and load weights trained so"
        )
    top_k = cfg.TEST.GLIP.RETRIEVAL_ITM_TOP_K
    if top_k > 0 and not hasattr(xvlm, "itm_head"):
        raise ValueError(
            f"TEST.GLIP.RETRIEVAL_ITM_TOP_K={top_k} re-ranks with ITM, but the model has no ITM "
            "head (MODEL.GLIP.XVLM.ITM_WEIGHT is 0); set it to 0"
        )
    records = [dict(r, index=i) for i, r in enumerate(DatasetCatalog.get(dataset_name))]
    texts, matches = caption_table([r["captions"] for r in records])
    loader = build_detection_test_loader(
        records,
        mapper=RetrievalImageMapper(cfg),
        batch_size=cfg.TEST.GLIP.RETRIEVAL_BATCH_SIZE,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    was_training = model.training
    model.eval()
    try:
        local = {}
        for batch in loader:
            features, sizes = _pyramid(model, batch)
            for x, e in zip(batch, xvlm.image_embeddings(features, sizes).cpu(), strict=True):
                local[x["index"]] = e
        image_emb = torch.stack(_all_rows(local, len(records)))
        text_emb = torch.cat(
            [
                xvlm.text_embeddings(model.language_backbone, texts[s : s + TEXT_BATCH]).cpu()
                for s in range(0, len(texts), TEXT_BATCH)
            ]
        )
        scores = image_emb @ text_emb.t()
        results = {"retrieval": retrieval_recalls(scores, matches)}
        if top_k > 0:
            pair_scores = _itm_pair_scores(model, xvlm, loader, texts, scores, top_k)
            i2t, t2i = rerank_scores(scores, top_k, pair_scores)
            results["retrieval_itm"] = retrieval_recalls(i2t, matches, t2i)
        results["retrieval_random"] = random_ranking_recalls(matches)
    finally:
        model.train(was_training)
    logger.info(
        "Retrieval on %s (%d images, %d captions): %s",
        dataset_name,
        len(records),
        len(texts),
        {k: {m: round(v, 1) for m, v in r.items()} for k, r in results.items()},
    )
    return results


def _itm_pair_scores(model, xvlm, loader, texts, scores, top_k):
    """ITM logits of every pair :func:`top_k_pairs` selects: a second pass over the images (the
    pyramids are recomputed rather than kept, so memory does not grow with the set)."""
    texts_per_image, images_per_text = top_k_pairs(scores, top_k)
    wanted = [set(row) for row in texts_per_image.tolist()]
    for t, col in enumerate(images_per_text.tolist()):
        for i in col:
            wanted[i].add(t)
    local = {}
    for batch in loader:
        features, sizes = _pyramid(model, batch)
        rows, pairs = [], []
        for b, x in enumerate(batch):
            for t in sorted(wanted[x["index"]]):
                rows.append(b)
                pairs.append((x["index"], t))
        for s in range(0, len(pairs), TEXT_BATCH):
            part = pairs[s : s + TEXT_BATCH]
            logits = xvlm.match_scores(
                features,
                sizes,
                rows[s : s + TEXT_BATCH],
                [texts[t] for _, t in part],
                model.language_backbone,
                model.head,
            )
            local.update(zip(part, logits.float().cpu().tolist(), strict=True))
    merged = {}
    for part in comm.all_gather(local):
        merged.update(part)
    return merged
