"""Phrase-grounding metrics: Flickr30K Entities recall@k and RefCOCO accuracy.

Official counterparts: microsoft/GLIP maskrcnn_benchmark/data/datasets/evaluation/flickr/
flickr_eval.py, ``FlickrEvaluator``, and data/datasets/refexp.py (precision at k).

Both read the ground truth from the dataset's registered records (``DatasetCatalog``), one
record per (image, caption), keyed by ``image_id``. The phrase index of a GT box is the one the
model reports for it in ``pred_classes``, i.e. its position in the test-time prompt that
:class:`~glip_d2.data.mapper.GroundingDatasetMapper` builds:

* MDETR grounding records (annotations with ``tokens_positive`` char spans): the phrases are
  those of :func:`glip_d2.text.record_phrases`, which the mapper uses (``tokens_positive_eval``
  when present, else the distinct span lists in annotation order); a box grounds every phrase
  its spans overlap (:func:`glip_d2.text.record_phrase_sets`), so an entity mentioned twice in
  a sentence is scored for both mentions, as the official evaluator does;
* detection-style records: ``category_id`` is the phrase index.

``phrase_types`` (Flickr, optional): per phrase a type string or a list of them
(``"people"``, ``"clothing"``, ...; :func:`glip_d2.data.datasets.attach_flickr_phrase_types`
reads them from Flickr30K Entities' ``Sentences/``); a phrase counts under each of its types
and once in "all".

Every image of the dataset with at least one phrase with a GT box must have been processed:
a recall or accuracy over a subset is not the dataset's, and both official evaluators refuse
it (microsoft/GLIP maskrcnn_benchmark/data/datasets/evaluation/flickr/flickr_eval.py,
``Flickr30kEntitiesRecallEvaluator.evaluate`` raises "Missing predictions"; data/datasets/
refexp.py, ``RefExpEvaluator.summarize`` looks every image up). ``evaluate`` raises
``RuntimeError`` naming how many images are missing.

IoU is computed on the boxes as given, without the legacy +1 (as the official evaluators do).
"""

import itertools
import logging
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ..text import record_phrase_sets

__all__ = ["FlickrRecallEvaluator", "RefExpAccuracyEvaluator", "box_iou_xyxy"]

logger = logging.getLogger(__name__)


def box_iou_xyxy(a, b):
    """IoU matrix (len(a), len(b)) of XYXY boxes, areas ``(x2 - x1) * (y2 - y1)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _gt_boxes_per_phrase(record):
    """{phrase index: (n, 4) XYXY array} of one dataset record (see the module docstring)."""
    annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    grounded = [i for i, a in enumerate(annos) if a.get("tokens_positive")]
    _, box_phrases = record_phrase_sets(record, [annos[i] for i in grounded])
    phrases_of = dict(zip(grounded, box_phrases, strict=True))
    boxes = defaultdict(list)
    for i, ann in enumerate(annos):
        mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
        box = BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYXY_ABS)
        for phrase in phrases_of[i] if i in phrases_of else [int(ann["category_id"])]:
            boxes[phrase].append(box)
    return {k: np.asarray(v, dtype=np.float64) for k, v in boxes.items()}


class _GroundingEvaluator(DatasetEvaluator):
    """Collects ranked boxes per (image, phrase) and the dataset's ground truth."""

    def __init__(self, dataset_name, distributed=True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._cpu = torch.device("cpu")
        self._gt = None
        self._image_ids = None

    def reset(self):
        self._predictions = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs, strict=True):
            inst = out["instances"].to(self._cpu)
            order = torch.argsort(inst.scores, descending=True)
            per_phrase = defaultdict(list)
            boxes = inst.pred_boxes.tensor[order].numpy()
            for cls, box in zip(inst.pred_classes[order].tolist(), boxes, strict=True):
                per_phrase[cls].append(box)
            self._predictions[inp["image_id"]] = {
                k: np.asarray(v, dtype=np.float64) for k, v in per_phrase.items()
            }

    def _ground_truth(self):
        """{image_id: (record, {phrase: GT boxes})} of the records with at least one GT box."""
        if self._gt is None:
            records = DatasetCatalog.get(self._dataset_name)
            self._image_ids = {r["image_id"] for r in records}
            self._gt = {}
            for r in records:
                boxes = _gt_boxes_per_phrase(r)
                if boxes:
                    self._gt[r["image_id"]] = (r, boxes)
        return self._gt

    def _gathered(self):
        if not self._distributed:
            return self._predictions
        comm.synchronize()
        parts = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        return dict(itertools.chain(*[p.items() for p in parts]))

    def _scored_images(self, predictions):
        """(record, {phrase: GT boxes}, {phrase: ranked predicted boxes}) of every image of
        the dataset with ground truth.

        Raises:
            KeyError: a prediction for an image the dataset does not hold.
            RuntimeError: images with ground truth that were not processed (module docstring).
        """
        gt = self._ground_truth()
        unknown = [i for i in predictions if i not in self._image_ids]
        if unknown:
            raise KeyError(
                f"image_id {unknown[0]!r} predicted but not in dataset {self._dataset_name!r}"
            )
        if not gt:
            raise ValueError(f"dataset {self._dataset_name!r} has no phrase with a GT box")
        missing = [i for i in gt if i not in predictions]
        if missing:
            raise RuntimeError(
                f"Missing predictions: {len(missing)} of the {len(gt)} images of "
                f"{self._dataset_name!r} with ground truth were not processed (image_id "
                f"{', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}); a "
                "score over a subset is not the dataset's score"
            )
        return [(record, boxes, predictions[i]) for i, (record, boxes) in gt.items()]


class FlickrRecallEvaluator(_GroundingEvaluator):
    """Recall@1/5/10 and upper bound (any box), per phrase type and over all phrases.

    A phrase is correct at k when one of its k best boxes has IoU >= 0.5 with one of its GT
    boxes (``gt_type="separate"``) or with the box enclosing them all (``"merged"``). Results
    are percentages under ``{"flickr": {"R@1_all": .., "UB_people": .., ...}}``.
    """

    TOPK = (1, 5, 10)

    def __init__(self, dataset_name, distributed=True, gt_type="separate", iou_thresh=0.5):
        super().__init__(dataset_name, distributed)
        if gt_type not in ("separate", "merged"):
            raise ValueError(f"Flickr GT type must be 'separate' or 'merged', got {gt_type!r}")
        self._gt_type = gt_type
        self._iou_thresh = iou_thresh

    def evaluate(self):
        predictions = self._gathered()
        if predictions is None:
            return {}
        hits = defaultdict(lambda: np.zeros(len(self.TOPK) + 1))
        counts = defaultdict(int)
        for record, gt, preds in self._scored_images(predictions):
            types = record.get("phrase_types")
            for phrase, gt_boxes in sorted(gt.items()):
                row = self._hits(gt_boxes, preds.get(phrase, np.zeros((0, 4))))
                ptypes = types[phrase] if types is not None else []
                ptypes = [ptypes] if isinstance(ptypes, str) else list(ptypes)
                for t in dict.fromkeys(["all"] + ptypes):  # each type once, "all" once
                    hits[t] += row
                    counts[t] += 1
        results = OrderedDict()
        for t in sorted(counts, key=lambda t: (t != "all", t)):
            for name, value in zip([f"R@{k}" for k in self.TOPK] + ["UB"], hits[t], strict=True):
                results[f"{name}_{t}"] = 100.0 * value / counts[t]
        logger.info(f"Flickr recall on {self._dataset_name} ({counts['all']} phrases): {results}")
        return {"flickr": results}

    def _hits(self, gt_boxes, pred_boxes):
        """(len(TOPK) + 1,) 0/1: a hit among the k best ranked boxes, for each k and any k."""
        if self._gt_type == "merged":
            gt_boxes = np.concatenate([gt_boxes[:, :2].min(0), gt_boxes[:, 2:].max(0)])[None]
        ok = (box_iou_xyxy(pred_boxes, gt_boxes) >= self._iou_thresh).any(axis=1)
        first = int(np.argmax(ok)) if ok.any() else None  # rank of the first correct box
        return np.array(
            [first is not None and first < k for k in self.TOPK] + [first is not None],
            dtype=np.float64,
        )


class RefExpAccuracyEvaluator(_GroundingEvaluator):
    """Referring-expression accuracy: the top-1 box hits (IoU >= 0.5) the referred object.

    Each record holds one expression (phrase 0) and its GT box. Also reports precision at 5
    and 10 (any of the k best boxes hits, MDETR's P@k). Percentages under ``{"refexp": ..}``.
    """

    TOPK = (1, 5, 10)

    def __init__(self, dataset_name, distributed=True, iou_thresh=0.5):
        super().__init__(dataset_name, distributed)
        self._iou_thresh = iou_thresh

    def process(self, inputs, outputs):
        # The referred object is the best box of the expression, whatever phrase index the
        # prompt gave it: rank all boxes of the image together.
        for inp, out in zip(inputs, outputs, strict=True):
            inst = out["instances"].to(self._cpu)
            order = torch.argsort(inst.scores, descending=True)
            boxes = inst.pred_boxes.tensor[order].numpy().astype(np.float64)
            self._predictions[inp["image_id"]] = {0: boxes}

    def evaluate(self):
        predictions = self._gathered()
        if predictions is None:
            return {}
        hits, count = np.zeros(len(self.TOPK)), 0
        for _, gt, preds in self._scored_images(predictions):
            gt_boxes = np.concatenate(list(gt.values()))
            pred_boxes = preds[0]
            ok = (box_iou_xyxy(pred_boxes, gt_boxes) >= self._iou_thresh).any(axis=1)
            hits += [bool(ok[:k].any()) for k in self.TOPK]
            count += 1
        results = OrderedDict(
            (f"Acc@{k}" if k == 1 else f"P@{k}", 100.0 * h / max(count, 1))
            for k, h in zip(self.TOPK, hits, strict=True)
        )
        logger.info(f"RefExp accuracy on {self._dataset_name} ({count} expressions): {results}")
        return {"refexp": results}
