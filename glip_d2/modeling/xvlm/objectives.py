"""``XVLMObjectives``: X-VLM's multi-grained objectives as optional extra losses of GLIPDetector.

GLIPDetector.losses calls it once per training batch with the batch's prompt jobs, the pyramid
P3..P7, the image sizes, the text encoder and the head (docs/XVLM.md). It returns weighted
losses:

* ``loss_itc``: whole image (pooled pyramid) vs image text, symmetric InfoNCE over the batch of
  all processes;
* ``loss_itc_box``: each grounded box (RoIAlign on its FPN level) vs its phrase text, the same;
* ``loss_itm``: does the text match the image, on fused features, with one hard negative text
  per image and one hard negative image per text drawn from the ITC similarities;
* ``loss_mlm``: masked tokens of the image text predicted from its image-fused features.

The image and box embeddings share one projection, captions and phrases another, so every
granularity lives in one space (X-VLM). The texts come from the detection batch itself
(:mod:`.texts`). With every weight 0, ``build_xvlm_objectives`` returns None and the detector
has no ``xvlm.*`` parameter.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import itc_loss, sample_hard_negatives
from .fusion import CrossAttentionFusion, MatchHead, run_head_tower
from .mlm import IGNORE, MLMHead, mask_tokens, pretrained_mlm_head_state
from .pooling import BoxPooler, mean_over_tokens, pool_pyramid, valid_location_masks
from .texts import image_text, phrase_text, text_key

__all__ = ["XVLMObjectives", "build_xvlm_objectives"]

TEMPERATURE_RANGE = (0.001, 0.5)  # X-VLM clamps its learnable temperature to this range


class Pyramid(NamedTuple):
    """A batch's pyramid: ``features`` per level (B, C, H_l, W_l), ``masks`` per level
    (B, H_l, W_l) True inside each image, ``image_sizes`` [(h, w)] before padding."""

    features: list
    masks: list
    image_sizes: list


class _ImagePairs(NamedTuple):
    """The batch's (image, image text) pairs: image index, text, ITC embeddings, text keys."""

    rows: list
    texts: list
    visual: torch.Tensor
    text: torch.Tensor
    keys: torch.Tensor


class XVLMObjectives(nn.Module):
    """ITC (image and box level), ITM and MLM on a GLIP detector's batch."""

    def __init__(
        self,
        *,
        visual_channels,
        strides,
        text_config,
        deep_fusion,
        itc_weight=0.0,
        itc_box_weight=0.0,
        itm_weight=0.0,
        mlm_weight=0.0,
        embed_dim=256,
        temperature=0.07,
        mlm_prob=0.15,
        mlm_max_masks=10,
        fusion_layers=1,
        fusion_min_stride=16,
        roi_size=7,
        separator=". ",
        mlm_head_state=None,
    ):
        """
        Args:
            visual_channels (int): the pyramid's width C.
            strides (list[int]): the pyramid's strides, level order.
            text_config: the text encoder's transformers config.
            deep_fusion (bool): the head fuses (EARLY_FUSE): ITM/MLM run its tower on pairs;
                otherwise a :class:`CrossAttentionFusion` is added.
            *_weight (float): loss weights; 0 leaves the objective (and its parameters) out.
            embed_dim (int): ITC embedding width; temperature: its initial value.
            mlm_prob, mlm_max_masks: masked tokens per text (:func:`mask_tokens`).
            fusion_layers (int): layers of the added cross encoder; fusion_min_stride: the
                finest pyramid level it reads.
            roi_size (int): RoIAlign bins per side for box embeddings.
            separator (str): the detection prompts' separator (label lists, :mod:`.texts`).
            mlm_head_state (dict | None): pretrained ``cls.predictions`` weights of the text model.
        """
        super().__init__()
        if itm_weight > 0 and itc_weight <= 0:
            raise ValueError(
                "MODEL.GLIP.XVLM.ITM_WEIGHT > 0 needs MODEL.GLIP.XVLM.ITC_WEIGHT > 0: ITM draws "
                "its hard negatives from the image-text ITC similarities"
            )
        self.weights = {"itc": itc_weight, "itc_box": itc_box_weight, "itm": itm_weight}
        self.weights["mlm"] = mlm_weight
        self.strides = list(strides)
        self.deep_fusion = deep_fusion
        self.separator = separator
        self.mlm_prob, self.mlm_max_masks = mlm_prob, mlm_max_masks
        text_width = text_config.hidden_size
        if itc_weight > 0 or itc_box_weight > 0:
            self.visual_proj = nn.Linear(visual_channels, embed_dim)
            self.text_proj = nn.Linear(text_width, embed_dim)
            self.temp = nn.Parameter(torch.tensor(float(temperature)))
        if itc_box_weight > 0:
            self.box_pooler = BoxPooler(self.strides, roi_size)
        if (itm_weight > 0 or mlm_weight > 0) and not deep_fusion:
            self.fusion = CrossAttentionFusion(
                visual_channels, text_config, self.strides, fusion_min_stride, fusion_layers
            )
        if itm_weight > 0:
            self.itm_head = MatchHead(visual_channels, text_width)
        if mlm_weight > 0:
            self.mlm_head = MLMHead(text_config, mlm_head_state)

    # ---- embeddings (training and retrieval) ---------------------------------------------

    def _temperature(self):
        with torch.no_grad():
            self.temp.clamp_(*TEMPERATURE_RANGE)
        return self.temp

    def embed_pooled_visual(self, pooled):
        """(N, C) pooled pyramid or box features -> (N, E) normalised embeddings (fp32)."""
        return F.normalize(self.visual_proj(pooled.float()), dim=-1)

    def embed_text_features(self, text):
        """TextFeatures (T, L, D) of the text encoder -> (T, E) normalised embeddings (fp32)."""
        return F.normalize(self.text_proj(mean_over_tokens(text.hidden, text.mask).float()), dim=-1)

    def image_embeddings(self, features, image_sizes):
        """(B, E) ITC embeddings of the images whose pyramid is ``features``."""
        masks = self.pyramid(features, image_sizes).masks
        return self.embed_pooled_visual(pool_pyramid(features, masks))

    @staticmethod
    def tokenize(language_backbone, texts):
        """``input_ids``/``attention_mask`` (T, L) of ``texts`` padded to the longest of them
        (at most MAX_QUERY_LEN): these short texts need not be padded like prompts."""
        device = next(language_backbone.parameters()).device
        enc = language_backbone.tokenizer(
            list(texts),
            max_length=language_backbone.max_query_len,
            padding="longest",
            truncation=True,
            return_tensors="pt",
        )
        return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}

    @classmethod
    def encode_texts(cls, language_backbone, texts):
        """The text encoder's TextFeatures (T, L, D) of ``texts`` (list[str])."""
        tokens = cls.tokenize(language_backbone, texts)
        return language_backbone(tokens["input_ids"], tokens["attention_mask"])

    def text_embeddings(self, language_backbone, texts):
        """(T, E) ITC embeddings of ``texts``."""
        return self.embed_text_features(self.encode_texts(language_backbone, texts))

    def pyramid(self, features, image_sizes):
        """The :class:`Pyramid` of ``features`` with the masks of the images' own locations."""
        return Pyramid(
            features, valid_location_masks(features, image_sizes, self.strides), image_sizes
        )

    def fused(self, pyramid, rows, text, head):
        """Fused (pooled visual (P, C), text tokens (P, L, D)) of the pairs (image ``rows[p]``
        of ``pyramid``, text ``p``); ``text`` is the encoder's TextFeatures (P, L, D)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=pyramid.features[0].device)
        if self.deep_fusion:
            feats = [f.index_select(0, index) for f in pyramid.features]
            masks = [m.index_select(0, index) for m in pyramid.masks]
            feats, hidden = run_head_tower(head, feats, text)
            return pool_pyramid(feats, masks), hidden
        hidden = self.fusion(pyramid.features, pyramid.masks, pyramid.image_sizes, index, text)
        return pool_pyramid(pyramid.features, pyramid.masks).index_select(0, index), hidden

    def match_logits(self, pyramid, rows, text, head):
        """(P,) ITM logits of the pairs (image ``rows[p]``, text ``p``)."""
        visual, hidden = self.fused(pyramid, rows, text, head)
        return self.itm_head(visual.float(), mean_over_tokens(hidden, text.mask).float())

    def match_scores(self, features, image_sizes, rows, texts, language_backbone, head):
        """(P,) ITM logits of (image ``rows[p]`` of ``features``, ``texts[p]``) (retrieval)."""
        text = self.encode_texts(language_backbone, texts)
        return self.match_logits(self.pyramid(features, image_sizes), rows, text, head)

    # ---- training ------------------------------------------------------------------------

    def forward(self, batched_inputs, jobs, features, image_sizes, *, language_backbone, head):
        """Weighted losses of one training batch.

        Args:
            batched_inputs (list[dict]): the detector's inputs (``instances`` with
                ``gt_boxes`` legacy xyxy and ``gt_classes`` phrase indices).
            jobs (list[PromptJob]): one per image, the prompt the head read.
            features (list[Tensor]): P3..P7, each (B, C, H_l, W_l).
            image_sizes (list[(h, w)]): sizes before padding.
            language_backbone, head: the detector's text encoder and head.
        Returns:
            dict[str, Tensor]: ``loss_itc``, ``loss_itc_box``, ``loss_itm``, ``loss_mlm`` (the
            enabled ones).
        """
        image_texts, image_rows, boxes, box_texts = [], [], [], []
        for job, x in zip(jobs, batched_inputs, strict=True):
            inst = x["instances"]
            classes = inst.gt_classes.tolist()
            text = image_text(job.caption, job.phrase_spans, classes, self.separator)
            if text is not None:
                image_texts.append(text)
                image_rows.append(job.image_index)
            boxes.append(inst.gt_boxes.tensor.to(features[0].device))
            box_texts += [phrase_text(job.caption, job.phrase_spans[c]) for c in classes]

        # Every distinct text ITC/ITM read goes through the text encoder once (MLM encodes its
        # masked copies itself).
        wanted = image_texts if self.weights["itc"] > 0 else []
        wanted = wanted + (box_texts if self.weights["itc_box"] > 0 else [])
        distinct = list(dict.fromkeys(wanted))
        position = {t: i for i, t in enumerate(distinct)}
        encoded = self.encode_texts(language_backbone, distinct) if distinct else None
        device = features[0].device
        pyramid = self.pyramid(features, image_sizes)
        losses = {}

        if self.weights["itc"] > 0 or self.weights["itc_box"] > 0:
            temperature = self._temperature()
            text_emb = self.embed_text_features(encoded) if encoded is not None else None
        if self.weights["itc"] > 0:
            rows = torch.tensor(image_rows, dtype=torch.long, device=device)
            image_emb = self.embed_pooled_visual(
                pool_pyramid(features, pyramid.masks).index_select(0, rows)
            )
            keys = torch.tensor([text_key(t) for t in image_texts], dtype=torch.long)
            pairs = _ImagePairs(
                image_rows,
                image_texts,
                image_emb,
                self._rows(text_emb, image_texts, position, image_emb),
                keys.to(device),
            )
            loss = itc_loss(pairs.visual, pairs.text, pairs.keys, temperature)
            losses["loss_itc"] = self.weights["itc"] * loss
        if self.weights["itc_box"] > 0:
            box_emb = self.embed_pooled_visual(self.box_pooler(features, boxes))
            phrase_emb = self._rows(text_emb, box_texts, position, box_emb)
            keys = torch.tensor([text_key(t) for t in box_texts], dtype=torch.long).to(device)
            losses["loss_itc_box"] = self.weights["itc_box"] * itc_loss(
                box_emb, phrase_emb, keys, temperature
            )
        if self.weights["itm"] > 0:
            losses["loss_itm"] = self.weights["itm"] * self._matching_loss(
                pairs, encoded, position, pyramid, temperature, head
            )
        if self.weights["mlm"] > 0:
            losses["loss_mlm"] = self.weights["mlm"] * self._mlm_loss(
                image_texts, image_rows, pyramid, language_backbone, head
            )
        return losses

    @staticmethod
    def _rows(table, texts, position, like):
        """Rows of ``table`` for ``texts`` ((0, E) like ``like`` when there are none)."""
        if not texts:
            return like.new_zeros((0, like.shape[1]))
        index = torch.tensor([position[t] for t in texts], device=table.device)
        return table.index_select(0, index)

    def _zero(self, *modules):
        """0 connected to ``modules``' parameters (DDP expects a gradient for each)."""
        return sum(p.sum() for m in modules for p in m.parameters()) * 0.0

    def _matching_loss(self, pairs, encoded, position, pyramid, temperature, head):
        """X-VLM's ITM: each (image, its text) pair, each image with a hard negative text and
        each text with a hard negative image (local batch), binary cross-entropy."""
        modules = [self.itm_head] + ([self.fusion] if not self.deep_fusion else [])
        n = len(pairs.rows)
        if n == 0:
            return self._zero(*modules)
        with torch.no_grad():
            similarity = pairs.visual @ pairs.text.t() / temperature
        negative_text = sample_hard_negatives(similarity, pairs.keys, pairs.keys).tolist()
        negative_image = sample_hard_negatives(similarity.t(), pairs.keys, pairs.keys).tolist()
        rows, texts, labels = [], [], []
        for i in range(n):
            rows.append(pairs.rows[i]), texts.append(pairs.texts[i]), labels.append(1.0)
            if negative_text[i] >= 0:
                rows.append(pairs.rows[i]), texts.append(pairs.texts[negative_text[i]])
                labels.append(0.0)
            if negative_image[i] >= 0:
                rows.append(pairs.rows[negative_image[i]]), texts.append(pairs.texts[i])
                labels.append(0.0)
        index = torch.tensor([position[t] for t in texts], device=pairs.visual.device)
        logits = self.match_logits(pyramid, rows, encoded.index_select(index), head)
        target = torch.tensor(labels, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target)

    def _mlm_loss(self, texts, rows, pyramid, language_backbone, head):
        """Masked copies of the image texts, encoded, fused with their image, predicted."""
        modules = [self.mlm_head] + ([self.fusion] if not self.deep_fusion else [])
        if not texts:
            return self._zero(*modules)
        tokenizer = language_backbone.tokenizer
        tokens = self.tokenize(language_backbone, texts)
        masked, labels = mask_tokens(
            tokens["input_ids"],
            tokens["attention_mask"],
            mask_token_id=tokenizer.mask_token_id,
            special_ids=tokenizer.all_special_ids,
            vocab_size=language_backbone.model.config.vocab_size,
            prob=self.mlm_prob,
            max_masks=self.mlm_max_masks,
        )
        text = language_backbone(masked, tokens["attention_mask"])
        _, hidden = self.fused(pyramid, rows, text, head)
        selected = labels != IGNORE
        if not selected.any():
            return self._zero(*modules)
        words = language_backbone.model.get_input_embeddings().weight
        logits = self.mlm_head(hidden[selected], words)
        return F.cross_entropy(logits.float(), labels[selected])


def build_xvlm_objectives(cfg, input_shapes, language_backbone):
    """The detector's ``xvlm`` module, or None when every MODEL.GLIP.XVLM weight is 0.

    Args:
        input_shapes (list[ShapeSpec]): the pyramid levels in stride order.
        language_backbone: the detector's text encoder (its config and checkpoint).
    """
    x = cfg.MODEL.GLIP.XVLM
    weights = {
        "itc_weight": x.ITC_WEIGHT,
        "itc_box_weight": x.ITC_BOX_WEIGHT,
        "itm_weight": x.ITM_WEIGHT,
        "mlm_weight": x.MLM_WEIGHT,
    }
    for key, value in weights.items():
        if value < 0:
            raise ValueError(f"MODEL.GLIP.XVLM.{key.upper()} must be >= 0, got {value}")
    if not any(v > 0 for v in weights.values()):
        return None
    widths = {s.channels for s in input_shapes}
    if len(widths) != 1:
        raise ValueError(f"X-VLM objectives need pyramid levels of one width, got {input_shapes}")
    lb = cfg.MODEL.LANGUAGE_BACKBONE
    state = None
    if x.MLM_WEIGHT > 0:
        state = pretrained_mlm_head_state(lb.MODEL_NAME, lb.WEIGHTS_FROM_CHECKPOINT)
    return XVLMObjectives(
        visual_channels=widths.pop(),
        strides=[s.stride for s in input_shapes],
        text_config=language_backbone.model.config,
        deep_fusion=cfg.MODEL.GLIP.EARLY_FUSE,
        embed_dim=x.EMBED_DIM,
        temperature=x.TEMPERATURE,
        mlm_prob=x.MLM_PROB,
        mlm_max_masks=x.MLM_MAX_MASKS,
        fusion_layers=x.FUSION_LAYERS,
        fusion_min_stride=x.FUSION_MIN_STRIDE,
        roi_size=x.ROI_SIZE,
        separator=cfg.DATASETS.GLIP.SEPARATOR,
        mlm_head_state=state,
        **weights,
    )
