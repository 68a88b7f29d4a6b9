"""Dataset record -> GLIP model input (docs/DESIGN.md, "The model's input contract")."""

import copy
import logging
import random
import re

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from ..structures import (
    clip_boxes_legacy,
    flip_boxes_legacy,
    nonempty_legacy,
    xywh_to_legacy_xyxy,
)
from ..text import (
    TrainingPromptSampler,
    build_detection_prompt,
    load_tokenizer,
    prompt_fits,
    record_phrases,
    warn_vocabulary,
)
from .caption_packing import CaptionPacker
from .datasets.checks import box_problem
from .transforms import GLIPResizeShortestEdge

__all__ = ["GroundingDatasetMapper", "read_record_image", "swap_left_right"]

logger = logging.getLogger(__name__)

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _swap_word(word):
    new = "right" if word.lower() == "left" else "left"
    if word.isupper():
        return new.upper()
    if word[0].isupper():
        return new.capitalize()
    return new


def swap_left_right(caption, phrase_spans):
    """Swap the words "left" and "right" (whole words, case kept) for a horizontal flip.

    "left" and "right" differ in length, so every span boundary after a swapped word moves;
    the spans are recomputed. A boundary inside a swapped word snaps to that word's edge.

    Returns:
        (str, list[list[[int, int]]]): the new caption and spans.
    """
    matches = list(_LEFT_RIGHT.finditer(caption))
    if not matches:
        return caption, copy.deepcopy(phrase_spans)
    pieces, edits, pos = [], [], 0
    for m in matches:
        new = _swap_word(m.group(0))
        pieces += [caption[pos : m.start()], new]
        edits.append((m.start(), m.end(), len(new)))
        pos = m.end()
    pieces.append(caption[pos:])

    def move(p, is_end):
        offset = 0
        for start, end, new_len in edits:
            if p <= start:
                break
            if p < end:  # inside the swapped word: snap to its edge
                return start + offset + (new_len if is_end else 0)
            offset += new_len - (end - start)
        return p + offset

    spans = [[[move(s, False), move(e, True)] for s, e in phrase] for phrase in phrase_spans]
    return "".join(pieces), spans


def read_record_image(record, image_format):
    """The record's image (H, W, 3) in ``image_format``, checked against the record's
    ``height``/``width``; an unreadable file is a ValueError naming it and the record."""
    file_name = record.get("file_name")
    try:
        image = utils.read_image(file_name, format=image_format)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Cannot read image {file_name!r} of record image_id={record.get('image_id')}: {e}"
        ) from e
    utils.check_image_size(record, image)
    return image


class GroundingDatasetMapper:
    """Reads a detection or grounding record and builds GLIP's input dict.

    A callable like D2's ``DatasetMapper``, which it does not subclass: the prompt, the legacy
    box convention and the caption-aware flip replace every step of that mapper.

    * Detection records (``category_id`` + the dataset's ``thing_classes``): in training a
      sampled prompt with negatives (:class:`TrainingPromptSampler`); at test time the fixed
      prompt of all classes in id order, or ``class_names`` when it exceeds the token limit.
    * Grounding records (``caption`` + per-annotation ``tokens_positive``): annotations with the
      same spans form one phrase. In training, records of pseudo-labelled caption sets get other
      captions of their set appended as negatives (:class:`CaptionPacker`).

    Boxes use the legacy inclusive convention (``glip_d2/structures/legacy_boxes.py``):
    ``x2 = x + w - 1``, clipped to ``[0, W-1]`` at the original size, degenerate ones dropped,
    then resized (coordinates scaled) and flipped as ``W - x - 1`` (microsoft/GLIP
    maskrcnn_benchmark/data/datasets/modulated_coco.py, ``ModulatedDataset.__getitem__`` and
    ``CocoGrounding.__getitem__``, through structures/bounding_box.py's ``BoxList``).
    """

    @configurable
    def __init__(
        self,
        is_train,
        *,
        augmentations,
        image_format="BGR",
        tokenizer=None,
        flip_prob=0.0,
        max_query_len=256,
        separator=". ",
        num_negatives=85,
        full_negative_prob=0.5,
        shuffle_prompt=True,
        fixed_train_prompt=False,
        default_dataset=None,
        caption_packer=None,
        seed=None,
    ):
        """
        Args:
            augmentations (list): resize augmentations (no flip: it is caption-aware here).
            tokenizer: fast tokenizer for token budgets; needed for detection records.
            flip_prob (float): horizontal flip probability in training.
            fixed_train_prompt (bool): train detection records with the evaluation prompt (all
                classes in id order, prompt overrides, no negatives; official DISABLE_SHUFFLE).
            default_dataset (str | None): metadata name for records without "dataset_name".
            caption_packer (CaptionPacker | None): packs captions of caption sets (training).
            seed (int | None): seeds a private RNG for prompts and flips (tests); None uses the
                global ``random`` module, which D2's loader seeds per worker.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.tokenizer = tokenizer
        self.flip_prob = flip_prob
        self.max_query_len = max_query_len
        self.separator = separator
        self.num_negatives = num_negatives
        self.full_negative_prob = full_negative_prob
        self.shuffle_prompt = shuffle_prompt
        self.fixed_train_prompt = fixed_train_prompt
        self.default_dataset = default_dataset
        self.caption_packer = caption_packer if is_train else None
        self.rng = random.Random(seed) if seed is not None else random
        self._samplers = {}
        self._test_prompts = {}
        self.num_degenerate = 0

    @classmethod
    def from_config(cls, cfg, is_train=True, tokenizer=None, caption_pools=None):
        """``caption_pools`` (dict[str, list[str]] | None): the captions of each caption set of
        ``DATASETS.TRAIN`` to pack (training, ``PACK_RANDOM_CAPTION_NUMBER`` > 0)."""
        if is_train:
            sizes, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
            style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            names = cfg.DATASETS.TRAIN
        else:
            sizes, max_size, style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
            names = cfg.DATASETS.TEST
        if tokenizer is None:
            lang_cfg = cfg.MODEL.LANGUAGE_BACKBONE
            tokenizer = load_tokenizer(lang_cfg.MODEL_NAME, lang_cfg.WEIGHTS_FROM_CHECKPOINT)
        packer = None
        if is_train and caption_pools and cfg.DATASETS.GLIP.PACK_RANDOM_CAPTION_NUMBER > 0:
            packer = CaptionPacker.from_config(cfg, caption_pools, tokenizer)
        return {
            "is_train": is_train,
            "caption_packer": packer,
            "augmentations": [GLIPResizeShortestEdge(sizes, max_size, style)],
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": tokenizer,
            "flip_prob": cfg.INPUT.GLIP.FLIP_PROB if is_train else 0.0,
            "max_query_len": cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN,
            "separator": cfg.DATASETS.GLIP.SEPARATOR,
            "num_negatives": cfg.DATASETS.GLIP.NUM_NEGATIVES,
            "full_negative_prob": cfg.DATASETS.GLIP.FULL_NEGATIVE_PROB,
            "shuffle_prompt": cfg.DATASETS.GLIP.SHUFFLE_PROMPT,
            "fixed_train_prompt": cfg.DATASETS.GLIP.FIXED_TRAIN_PROMPT,
            "default_dataset": names[0] if len(names) == 1 else None,
        }

    # ---- prompts -------------------------------------------------------------------------
    def _class_names(self, record):
        name = record.get("dataset_name", self.default_dataset)
        if name is None:
            raise ValueError(
                f"Record {record.get('file_name')!r} has no 'dataset_name' and the mapper no "
                "default dataset: cannot find its class names"
            )
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if not classes:
            raise ValueError(f"Dataset {name!r} has no thing_classes metadata for prompts")
        return name, classes

    def _detection_prompt(self, record, class_ids):
        """Returns (dict of prompt keys, class id -> phrase index or None at test time)."""
        name, classes = self._class_names(record)
        if self.tokenizer is None:
            raise ValueError("GroundingDatasetMapper needs a tokenizer for detection prompts")
        if not self.is_train or self.fixed_train_prompt:
            if name not in self._test_prompts:
                self._test_prompts[name] = self._fixed_prompt(name, classes)
            prompt = copy.deepcopy(self._test_prompts[name])
            if not self.is_train:
                return prompt, None
            if "class_names" in prompt:
                raise ValueError(
                    f"DATASETS.GLIP.FIXED_TRAIN_PROMPT: the prompt of all {len(classes)} classes "
                    f"of {name!r} exceeds MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN="
                    f"{self.max_query_len} tokens; train it with sampled prompts instead"
                )
            return prompt, {c: c for c in range(len(classes))}
        if name not in self._samplers:
            if MetadataCatalog.get(name).get("prompt_overrides", None):
                logger.warning(
                    f"The prompt overrides of {name!r} apply to its evaluation prompt and, with "
                    "DATASETS.GLIP.FIXED_TRAIN_PROMPT, to training; sampled training prompts "
                    "use the plain class names (official: CAPTION_PROMPT needs DISABLE_SHUFFLE)"
                )
            self._samplers[name] = TrainingPromptSampler(
                self.tokenizer,
                classes,
                num_negatives=self.num_negatives,
                full_negative_prob=self.full_negative_prob,
                max_tokens=self.max_query_len - 2,
                separator=self.separator,
                shuffle=self.shuffle_prompt,
            )
        caption, spans, phrase_classes = self._samplers[name](class_ids, self.rng)
        prompt = {
            "caption": caption,
            "phrase_spans": spans,
            "phrase_names": [classes[c] for c in phrase_classes],
        }
        return prompt, {c: k for k, c in enumerate(phrase_classes)}

    def _fixed_prompt(self, name, classes):
        """All classes in id order with the dataset's ``prompt_overrides`` metadata (the official
        evaluation prompt; docs/OFFICIAL_BEHAVIOURS.md, "Detection prompts and chunks");
        ``class_names`` (chunked by the model, no overrides) when it exceeds the token limit."""
        overrides = MetadataCatalog.get(name).get("prompt_overrides", None)
        caption, spans = build_detection_prompt(
            classes, self.separator, overrides=overrides, check_duplicates=False
        )
        warn_vocabulary(self.tokenizer, classes)
        if prompt_fits(self.tokenizer, caption, self.max_query_len):
            return {"caption": caption, "phrase_spans": spans, "phrase_names": list(classes)}
        if overrides:
            logger.warning(
                f"The prompt of {name!r} exceeds {self.max_query_len} tokens: it is chunked "
                "from the plain class names and its prompt overrides are not used"
            )
        return {"class_names": list(classes)}

    @staticmethod
    def _grounding_prompt(record, annos, is_train):
        """Returns (dict of prompt keys, phrase index of each annotation)."""
        if not record["caption"]:
            raise ValueError(f"Record {record.get('file_name')!r} has an empty caption")
        phrases, box_phrase = record_phrases(record, annos, use_eval_phrases=not is_train)
        if not phrases:
            raise ValueError(f"Record {record.get('file_name')!r} has no phrase to ground")
        prompt = {"caption": record["caption"], "phrase_spans": phrases}
        for key in ("phrase_ids", "phrase_names", "sentence_id", "original_img_id"):
            if key in record:
                prompt[key] = copy.deepcopy(record[key])
        return prompt, box_phrase

    # ---- boxes ---------------------------------------------------------------------------
    def _legacy_boxes(self, record, annos, height, width):
        """Inclusive xyxy boxes at the original size and the indices of the kept annotations."""
        xywh = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS) for a in annos]
        xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
        boxes = xywh_to_legacy_xyxy(xywh)
        bad = ~np.isfinite(xywh).all(axis=1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
        bad |= (boxes[:, 0] > width - 1) | (boxes[:, 1] > height - 1)
        bad |= (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
        if bad.any():  # the loaders refuse these already (datasets/checks.py); other records
            i = int(np.argmax(bad))
            raise ValueError(
                f"Record {record.get('file_name')!r} (image_id={record.get('image_id')}): box "
                f"{list(annos[i]['bbox'])} {box_problem(xywh[i], height, width)}"
            )
        boxes = clip_boxes_legacy(boxes, height, width)
        keep = np.nonzero(nonempty_legacy(boxes))[0].tolist()
        dropped = len(annos) - len(keep)
        if dropped:
            self.num_degenerate += dropped
            logger.debug(
                "Skipped %d degenerate boxes in %s (%d so far)",
                dropped,
                record.get("file_name"),
                self.num_degenerate,
            )
        return boxes[keep], keep

    # ---- main ----------------------------------------------------------------------------
    def __call__(self, dataset_dict):
        record = copy.deepcopy(dataset_dict)
        image = read_record_image(record, self.image_format)
        height, width = image.shape[:2]

        annos = [a for a in record.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        is_grounding = "caption" in record
        boxes, keep = self._legacy_boxes(record, annos, height, width)
        if is_grounding:
            # Phrases come from every annotation, as the grounding evaluators read them.
            prompt, box_phrase = self._grounding_prompt(record, annos, self.is_train)
            box_phrase = [box_phrase[i] for i in keep]
            if self.caption_packer is not None:
                prompt["caption"], prompt["phrase_spans"] = self.caption_packer(
                    record.get("dataset_name"), prompt["caption"], prompt["phrase_spans"], self.rng
                )
        else:
            annos = [annos[i] for i in keep]
            class_ids = [int(a["category_id"]) for a in annos]
            prompt, class_to_phrase = self._detection_prompt(record, class_ids)
            if class_to_phrase is not None:  # boxes of classes left out of the prompt go
                box_phrase = [class_to_phrase.get(c) for c in class_ids]
                kept = [i for i, p in enumerate(box_phrase) if p is not None]
                boxes, box_phrase = boxes[kept], [box_phrase[i] for i in kept]

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        new_h, new_w = image.shape[:2]
        boxes = transforms.apply_box(boxes) if len(boxes) else boxes

        if self.is_train and self.flip_prob > 0 and self.rng.random() < self.flip_prob:
            image = image[:, ::-1]
            boxes = flip_boxes_legacy(boxes, new_w)
            if "caption" in prompt:
                prompt["caption"], prompt["phrase_spans"] = swap_left_right(
                    prompt["caption"], prompt["phrase_spans"]
                )

        out = {k: v for k, v in record.items() if k in ("file_name", "image_id", "dataset_name")}
        out["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["height"] = record.get("height", height)
        out["width"] = record.get("width", width)
        out.update(prompt)
        if self.is_train:
            instances = Instances((new_h, new_w))
            instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            instances.gt_classes = torch.as_tensor(box_phrase, dtype=torch.int64)
            out["instances"] = instances
        return out
