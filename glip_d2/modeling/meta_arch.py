"""GLIPDetector: GLIP's one-stage grounded detector as a Detectron2 meta-architecture.

Pipeline (microsoft/GLIP maskrcnn_benchmark/modeling/detector/generalized_vl_rcnn.py,
``GeneralizedVLRCNN.forward``): BGR images are normalised and zero-padded; the visual backbone gives
P3..P7; each distinct prompt of the batch goes through the text encoder once; the fused head
scores every location against every token; ATSS + losses in training, phrase scores + NMS at
inference. Vocabularies too long for one prompt are split into chunks: the visual backbone
still runs once per image, the head once per chunk (docs/OFFICIAL_BEHAVIOURS.md, "Detection
prompts and chunks").

Text is not padded to MAX_QUERY_LEN: the prompts of a head pass share the length of the
longest of them (docs/DESIGN.md, "Text length"); positive maps are cut to that length.
"""

from contextlib import nullcontext

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_anchor_generator, build_backbone
from detectron2.structures import ImageList, Instances
from torch import nn

from ..text import PromptJob, PromptJobBuilder
from .box_coder import BoxCoder
from .head import build_glip_head
from .image_checks import check_finite_images
from .language_backbone import build_language_backbone
from .loss import GLIPLoss
from .postprocess import GLIPPostProcessor, rescale_instances
from .xvlm import build_xvlm_objectives

__all__ = ["GLIPDetector"]


@META_ARCH_REGISTRY.register()
class GLIPDetector(nn.Module):
    """GLIP (official ``GeneralizedVLRCNN`` with the VLDyHead RPN, no ROI heads).

    Input: a list of dicts (docs/DESIGN.md): ``image`` (3, H, W) BGR 0-255, optional
    ``height``/``width``, either ``caption`` + ``phrase_spans`` or ``class_names``, and in
    training ``instances`` (``gt_boxes`` legacy xyxy, ``gt_classes`` phrase indices).
    Output: training, a loss dict; inference, ``[{"instances": Instances}]`` with
    ``pred_boxes``, ``scores`` and ``pred_classes`` (phrase index in the image's vocabulary).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        language_backbone,
        head,
        anchor_generator,
        loss,
        post_processor,
        pixel_mean,
        pixel_std,
        size_divisibility=32,
        chunk_size=0,
        chunk_batch=0,
        separator=". ",
        inference_dtype="float32",
        xvlm=None,
    ):
        """
        Args:
            backbone (Backbone): images -> dict of the 5 pyramid levels P3..P7.
            language_backbone (nn.Module): ``tokenizer``, ``tokenize``, forward -> ``TextFeatures``.
            head (nn.Module): ``head(features, text)`` -> logits / bbox_reg / centerness.
            anchor_generator (nn.Module): D2 anchor generator (``MODEL.ANCHOR_GENERATOR.NAME``,
                ``GLIPAnchorGenerator`` for GLIP): anchors of the 5 levels.
            loss (GLIPLoss): ATSS assignment and losses.
            post_processor (GLIPPostProcessor): detections from head outputs.
            pixel_mean, pixel_std (list[float]): BGR 0-255 normalisation.
            size_divisibility (int): pad images to a multiple of this.
            chunk_size (int): at most this many class names per prompt (0: as many as fit).
            chunk_batch (int): prompt chunks run through the head together at most; 0: 1 on
                CPU (batching buys no speed there and multiplies the head's memory), 4 on CUDA.
            separator (str): joins class names in detection prompts.
            inference_dtype (str): "float32", "bfloat16" or "float16": autocast dtype of the
                backbone, text encoder and head at inference (post-processing stays fp32);
                training is not affected. float16 needs CUDA.
            xvlm (XVLMObjectives or None): X-VLM's extra training losses (docs/XVLM.md); None
                (every MODEL.GLIP.XVLM weight 0) keeps the official parameter set.
        """
        super().__init__()
        self.backbone = backbone
        self.language_backbone = language_backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss = loss
        self.post_processor = post_processor
        self.size_divisibility = size_divisibility
        if int(chunk_batch) < 0:
            raise ValueError(f"MODEL.GLIP.CHUNK_BATCH must be >= 0, got {chunk_batch}")
        self.chunk_batch = int(chunk_batch)
        self.inference_dtype = _inference_dtype(inference_dtype)
        self.xvlm = xvlm  # None adds no parameter: state_dict keys stay the official ones
        self.prompts = PromptJobBuilder(
            language_backbone.tokenizer,
            max_len=language_backbone.max_query_len,
            chunk_size=chunk_size,
            separator=separator,
        )
        shapes = backbone.output_shape()
        self.in_features = sorted(shapes, key=lambda f: shapes[f].stride)
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel mean/std need 3 values, got {pixel_mean} / {pixel_std}")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        inference_dtype = _inference_dtype(cfg.MODEL.GLIP.INFERENCE_DTYPE, cfg.MODEL.DEVICE)
        backbone = build_backbone(cfg)
        language_backbone = build_language_backbone(cfg)
        shapes = backbone.output_shape()
        ordered = [shapes[f] for f in sorted(shapes, key=lambda f: shapes[f].stride)]
        head = build_glip_head(cfg, ordered, lang_config=language_backbone.model.config)
        if cfg.MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER:
            if cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT:
                raise ValueError(
                    "MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER copies the text encoder's layers at "
                    "build time, but MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT builds it "
                    "with random weights"
                )
            head.init_text_layers_from(
                language_backbone.model.encoder.layer, cfg.MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER
            )
        box_coder = BoxCoder(cfg.MODEL.GLIP.BBOX_REG_WEIGHTS)
        return {
            "backbone": backbone,
            "language_backbone": language_backbone,
            "head": head,
            "anchor_generator": build_anchor_generator(cfg, ordered),
            "loss": GLIPLoss(cfg, box_coder=box_coder),
            "post_processor": GLIPPostProcessor(cfg, box_coder=box_coder),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": max(cfg.MODEL.GLIP.SIZE_DIVISIBILITY, backbone.size_divisibility),
            "chunk_size": cfg.MODEL.GLIP.CHUNK_SIZE,
            "chunk_batch": cfg.MODEL.GLIP.CHUNK_BATCH,
            "separator": cfg.DATASETS.GLIP.SEPARATOR,
            "inference_dtype": inference_dtype,
            "xvlm": build_xvlm_objectives(cfg, ordered, language_backbone),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        """Normalise the BGR images and pad them into an ``ImageList`` (zeros after norm).

        Non-finite pixels are refused here, before they reach the backbone
        (:func:`~glip_d2.modeling.image_checks.check_finite_images`).
        """
        check_finite_images(batched_inputs)
        images = []
        for i, x in enumerate(batched_inputs):
            img = x["image"]
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got {tuple(img.shape)}")
            images.append((img.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility, pad_value=0.0)

    def forward(self, batched_inputs):
        """See the class docstring."""
        if not batched_inputs:
            raise ValueError("GLIPDetector got an empty list of images")
        images = self.preprocess_image(batched_inputs)
        if self.training:
            return self.losses(batched_inputs, images)
        return self.inference(batched_inputs, images)

    # ---- shared pieces -------------------------------------------------------------------

    def _features_and_anchors(self, images):
        """P3..P7 features, the (N, 4) anchors of all levels and the anchors per level."""
        feats = self.backbone(images.tensor)
        features = [feats[f] for f in self.in_features]
        anchors = [b.tensor for b in self.anchor_generator(features)]
        return features, torch.cat(anchors), [a.shape[0] for a in anchors]

    def _encode_prompts(self, jobs, text_cache=None):
        """Runs the text encoder once per distinct caption (or takes it from ``text_cache``,
        a :class:`TextFeatureCache`, which is only consulted at inference without gradients).

        Returns:
            TextFeatures: over the distinct captions (U, L, ...), and (len(jobs),) int64
            indices of each job's caption in it.
        """
        distinct = {}
        for job in jobs:
            distinct.setdefault(job.caption, len(distinct))
        lang = self.language_backbone
        if text_cache is not None and not self.training and not torch.is_grad_enabled():
            text = text_cache.encode(lang, list(distinct), self.device)
        else:
            tokens = lang.tokenize(list(distinct), device=self.device)
            text = lang(tokens["input_ids"], tokens["attention_mask"])
        index = torch.tensor([distinct[j.caption] for j in jobs], device=self.device)
        return text, index

    def _select_text(self, text, index):
        """The text of some jobs, (J, L, ...): L is the longest of their prompts (MAX_QUERY_LEN
        with PAD_TO_MAX), so a pass over short prompts does not carry a longer one's padding."""
        text = text.index_select(index)
        return text if self.language_backbone.pad_to_max else text.trim()

    def _autocast(self):
        """The inference precision (MODEL.GLIP.INFERENCE_DTYPE) for the backbone, text
        encoder and head; a no-op in fp32."""
        if self.inference_dtype == torch.float32:
            return nullcontext()
        _inference_dtype(self.inference_dtype, self.device.type)  # e.g. fp16 moved to CPU
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    def _run_head(self, features, text, image_ids):
        """Head over (image, prompt) pairs: ``image_ids`` (list[int]) and the pairs' texts."""
        if image_ids != list(range(features[0].shape[0])):
            index = torch.tensor(image_ids, device=self.device)
            features = [f.index_select(0, index) for f in features]
        return self.head(features, text)

    # ---- training ------------------------------------------------------------------------

    def losses(self, batched_inputs, images=None):
        """Loss dict of a batch (one prompt per image).

        Args:
            images (ImageList or None): already normalised images; default: preprocess.
        """
        if not batched_inputs:
            raise ValueError("GLIPDetector got an empty list of images")
        if images is None:
            images = self.preprocess_image(batched_inputs)
        jobs = []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(f"image {i}: training needs 'instances' (got keys {sorted(x)})")
            jobs.extend(self.prompts.jobs(i, x, allow_chunks=False))

        features, anchors, num_per_level = self._features_and_anchors(images)
        text, text_index = self._encode_prompts(jobs)
        text = self._select_text(text, text_index)

        gt_boxes, gt_maps = [], []
        for job, x in zip(jobs, batched_inputs, strict=True):
            inst = x["instances"]
            pmap = _cut_positive_map(self.prompts.positive_map(job), text.length)
            classes = inst.gt_classes.to(torch.long).cpu()
            bad = (classes < 0) | (classes >= pmap.shape[0])
            if bad.any():
                raise ValueError(
                    f"image {job.image_index}: gt_classes {classes[bad].tolist()} outside the "
                    f"{pmap.shape[0]} phrases of caption {job.caption!r}"
                )
            gt_boxes.append(inst.gt_boxes.tensor.to(self.device))
            gt_maps.append(pmap[classes].to(self.device))

        outputs = self._run_head(features, text, list(range(len(jobs))))
        losses = self.loss(outputs, anchors, num_per_level, gt_boxes, gt_maps, text.mask)
        # ---- X-VLM objectives (issue #17, glip_d2/modeling/xvlm/): off unless configured ----
        if self.xvlm is not None:
            losses.update(
                self.xvlm(
                    batched_inputs,
                    jobs,
                    features,
                    images.image_sizes,
                    language_backbone=self.language_backbone,
                    head=self.head,
                )
            )
        return losses

    # ---- inference -----------------------------------------------------------------------

    def dense_outputs(self, batched_inputs, images=None, text_cache=None):
        """The head's outputs for each image's ``caption``, before any phrase is chosen.

        The head scores tokens, not phrases, so its outputs do not depend on ``phrase_spans``:
        post-processing them with a positive map gives exactly what :meth:`inference` gives
        for that caption and those phrases (used to find phrases with the model,
        glip_d2/modeling/phrase_grounding.py).

        Returns:
            dict: ``logits`` (B, N, L), ``bbox_reg`` (B, N, 4), ``centerness`` (B, N, 1),
            ``text_mask`` (B, L), ``anchors`` (N, 4), ``num_anchors_per_level`` (list[int]),
            ``images`` (the normalised ``ImageList``). ``text_cache`` as in :meth:`inference`.
        """
        if images is None:
            images = self.preprocess_image(batched_inputs)
        jobs = []
        for i, x in enumerate(batched_inputs):
            if not isinstance(x.get("caption"), str) or not x["caption"].strip():
                raise ValueError(f"image {i}: dense outputs need a non-empty 'caption'")
            jobs.append(PromptJob(i, x["caption"], (), ()))
        with self._autocast():
            features, anchors, num_per_level = self._features_and_anchors(images)
            text, text_index = self._encode_prompts(jobs, text_cache)
            text = self._select_text(text, text_index)
            outputs = self._run_head(features, text, list(range(len(jobs))))
        # Token scores are read in fp32 (glip_d2/modeling/phrase_grounding.py), as post-processing.
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
        return {
            **outputs,
            "text_mask": text.mask,
            "anchors": anchors,
            "num_anchors_per_level": num_per_level,
            "images": images,
        }

    def inference(self, batched_inputs, images=None, do_postprocess=True, text_cache=None):
        """Detections per image.

        Args:
            images (ImageList or None): already normalised images; default: preprocess.
            do_postprocess (bool): rescale boxes to each input's ``height``/``width``.
            text_cache (TextFeatureCache or None): text features of earlier calls, used when
                gradients are off (``GLIPPredictor`` and the evaluation loop pass one).
        Returns:
            list[dict]: ``{"instances": Instances}`` per image.
        """
        if not batched_inputs:
            raise ValueError("GLIPDetector got an empty list of images")
        if images is None:
            images = self.preprocess_image(batched_inputs)
        jobs = []
        for i, x in enumerate(batched_inputs):
            jobs.extend(self.prompts.jobs(i, x, allow_chunks=True))
        with self._autocast():
            features, anchors, num_per_level = self._features_and_anchors(images)
            text, text_index = self._encode_prompts(jobs, text_cache)
        # One pass per image when there are no chunks; chunks go CHUNK_BATCH at a time, each
        # pass post-processed (in fp32) before the next one runs.
        chunk_batch = self.chunk_batch or (1 if self.device.type == "cpu" else 4)
        group = max(len(batched_inputs), chunk_batch)
        per_image = [[] for _ in batched_inputs]
        for start in range(0, len(jobs), group):
            part = jobs[start : start + group]
            part_text = self._select_text(text, text_index[start : start + len(part)])
            with self._autocast():
                outputs = self._run_head(features, part_text, [j.image_index for j in part])
            pmaps = [
                _cut_positive_map(self.prompts.positive_map(j), part_text.length).to(self.device)
                for j in part
            ]
            results = self.post_processor(
                outputs,
                anchors,
                num_per_level,
                pmaps,
                [images.image_sizes[j.image_index] for j in part],
            )
            del outputs, part_text  # free this pass's logits before the next pass
            for job, inst in zip(part, results, strict=True):
                ids = torch.tensor(job.phrase_ids, dtype=torch.long, device=self.device)
                inst.pred_classes = ids[inst.pred_classes]
                per_image[job.image_index].append(inst)

        out = []
        for x, parts, size in zip(batched_inputs, per_image, images.image_sizes, strict=True):
            inst = parts[0] if len(parts) == 1 else Instances.cat(parts)
            if do_postprocess:
                inst = rescale_instances(inst, x.get("height", size[0]), x.get("width", size[1]))
            out.append({"instances": inst})
        return out


_INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _inference_dtype(name, device=None):
    """MODEL.GLIP.INFERENCE_DTYPE (a name or a torch dtype) -> torch dtype, checked against the
    device type (fp16 autocast is refused on CPU: no fast fp16 matrix products there, and the
    deformable convolution has no CPU fp16 kernel; use bfloat16)."""
    dtype = _INFERENCE_DTYPES.get(name, name)
    if dtype not in _INFERENCE_DTYPES.values():
        raise ValueError(
            f"MODEL.GLIP.INFERENCE_DTYPE={name!r}: expected one of {sorted(_INFERENCE_DTYPES)}"
        )
    if dtype == torch.float16 and device is not None and str(device).startswith("cpu"):
        raise ValueError(
            "MODEL.GLIP.INFERENCE_DTYPE='float16' needs CUDA (MODEL.DEVICE is "
            f"{str(device)!r}); on CPU use 'bfloat16' or 'float32'"
        )
    return dtype


def _cut_positive_map(positive_map, length):
    """A (P, MAX_QUERY_LEN) positive map cut to the ``length`` token columns of the text.

    The caption's own tokens all lie within ``length`` (the text is at least as long as
    its longest prompt), so only empty columns are dropped.
    """
    if positive_map.shape[1] <= length:
        return positive_map
    if positive_map[:, length:].any():
        raise RuntimeError(
            f"positive map marks tokens after column {length}, the text's length (tokenizer "
            "and text encoder disagree on the prompt's tokens)"
        )
    return positive_map[:, :length]
