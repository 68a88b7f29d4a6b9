"""``GLIPPredictor``: Detectron2's ``DefaultPredictor`` for grounded detection.

::

    predictor = GLIPPredictor(cfg)
    out = predictor(image_bgr, ["person", "bicycle"])          # class names
    out = predictor(image_bgr, {"caption": "a red car", "phrase_spans": [[[0, 9]]]})
    out = predictor(image_bgr, "two dogs play with a red ball")  # noun phrases (spaCy)
    out["instances"].pred_classes  # index into out["phrases"]

A prompt may be

* a list of class names: the model builds the detection prompt ("a. b. c", spec §6.4) and
  splits a vocabulary longer than the text encoder's 256 tokens into chunks;
* a caption with explicit phrases: ``{"caption": str, "phrase_spans": [[[start, end), ...],
  ...]}`` (optional ``"phrases"``: names) or a ``(caption, phrase_spans)`` tuple;
* a free sentence (``str``): split into noun phrases by :mod:`glip_d2.noun_phrases`;
* ``None``: the ``thing_classes`` of ``cfg.DATASETS.TEST[0]``'s metadata.
"""

import torch
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from . import modeling  # noqa: F401  (registers GLIPDetector and the backbones)
from .checkpoint import GLIPCheckpointer, load_prompt_embedding, use_text_encoder_from_weights

__all__ = ["GLIPPredictor", "normalize_prompt"]


def _check_spans(caption, spans):
    if not isinstance(spans, (list, tuple)) or not spans:
        raise ValueError(f"phrase_spans must be a non-empty list (one entry per phrase): {spans!r}")
    out = []
    for k, phrase in enumerate(spans):
        if not isinstance(phrase, (list, tuple)) or not phrase:
            raise ValueError(
                f"phrase_spans[{k}] must be a non-empty list of [start, end): {phrase!r}"
            )
        checked = []
        for span in phrase:
            if (
                not isinstance(span, (list, tuple))
                or len(span) != 2
                or not 0 <= int(span[0]) < int(span[1]) <= len(caption)
            ):
                raise ValueError(
                    f"phrase_spans[{k}] has span {span!r}, not a [start, end) range inside the "
                    f"caption of {len(caption)} characters"
                )
            checked.append([int(span[0]), int(span[1])])
        out.append(checked)
    return out


def normalize_prompt(prompt, default_names=None):
    """Turn any accepted prompt form into the model's input fields and phrase names.

    Returns:
        (dict, list[str]): either ``{"class_names": [...]}`` or ``{"caption": str,
        "phrase_spans": [...]}``, and the name of every phrase (class index -> name).
    Raises:
        ValueError / TypeError: naming the value at fault.
    """
    if prompt is None:
        if not default_names:
            raise ValueError(
                "no prompt given and cfg.DATASETS.TEST[0] has no thing_classes metadata; pass a "
                "prompt (class names, a caption with phrase_spans, or a sentence)"
            )
        prompt = list(default_names)
    if isinstance(prompt, str):
        from .noun_phrases import extract_noun_phrases

        names, spans = extract_noun_phrases(prompt)
        return {"caption": prompt, "phrase_spans": spans}, names
    if isinstance(prompt, dict):
        if "caption" not in prompt or "phrase_spans" not in prompt:
            raise ValueError(
                f"a dict prompt needs 'caption' and 'phrase_spans' keys, got {sorted(prompt)}"
            )
        caption = prompt["caption"]
        spans = _check_spans(caption, prompt["phrase_spans"])
        names = prompt.get("phrases") or [caption[p[0][0] : p[0][1]] for p in spans]
        if len(names) != len(spans):
            raise ValueError(f"{len(names)} phrase names for {len(spans)} phrase_spans entries")
        return {"caption": caption, "phrase_spans": spans}, list(names)
    if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str):
        return normalize_prompt({"caption": prompt[0], "phrase_spans": prompt[1]})
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(n, str) for n in prompt):
        if any(not n.strip() for n in prompt):
            raise ValueError(f"class names must be non-empty strings: {list(prompt)!r}")
        return {"class_names": list(prompt)}, list(prompt)
    raise TypeError(
        "prompt must be a list of class names, a {'caption', 'phrase_spans'} dict, a "
        f"(caption, phrase_spans) tuple, a sentence or None; got {prompt!r}"
    )


class GLIPPredictor(DefaultPredictor):
    """Builds the model from ``cfg``, loads ``cfg.MODEL.WEIGHTS`` (official or glip_d2 files),
    and runs single-image or batched inference on BGR (``cfg.INPUT.FORMAT``) numpy images.

    Images are resized like the official evaluation (``GLIPResizeShortestEdge`` with
    ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); boxes come back in original-image pixels.
    When ``MODEL.WEIGHTS`` holds the text encoder (official files do), the model is built with
    ``MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT``, so nothing is downloaded.
    """

    def __init__(self, cfg, *, ema=False, prompt_embedding=None):
        """
        Args:
            cfg (CfgNode): a glip_d2 config.
            ema (bool): from an official file, use ``model_ema`` instead of ``model``.
            prompt_embedding (str | None): a tuned prompt embedding file loaded after
                ``MODEL.WEIGHTS`` (default ``MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING``). It
                changes the tuned prompt only; class names equal to the tuned vocabulary are
                turned into the tuned caption (glip_d2/checkpoint/prompt_embedding.py).
        """
        from .data.transforms import GLIPResizeShortestEdge

        self.cfg = cfg.clone()
        self.cfg.defrost()
        use_text_encoder_from_weights(self.cfg)
        if prompt_embedding is not None:
            self.cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING = str(prompt_embedding)
        self.cfg.freeze()
        self.model = build_model(self.cfg)
        self.model.eval()
        self.metadata = (
            MetadataCatalog.get(self.cfg.DATASETS.TEST[0]) if len(self.cfg.DATASETS.TEST) else None
        )
        GLIPCheckpointer(
            self.model,
            ema=ema,
            text_encoder_from_checkpoint=self.cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT,
        ).load(self.cfg.MODEL.WEIGHTS)
        path = self.cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING
        self.prompt_embedding = load_prompt_embedding(self.model, path) if path else None
        self.aug = GLIPResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST],
            self.cfg.INPUT.MAX_SIZE_TEST,
        )
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")

    @property
    def default_names(self):
        """The class names used when no prompt is given (``DATASETS.TEST[0]`` metadata)."""
        return list(getattr(self.metadata, "thing_classes", None) or [])

    def prepare(self, original_image, prompt=None):
        """The model input dict of one image and prompt, and the phrase names."""
        if not hasattr(original_image, "shape") or original_image.ndim != 3:
            raise ValueError(
                "expected an (H, W, 3) uint8 image array, got "
                f"{getattr(original_image, 'shape', type(original_image))}"
            )
        if self.input_format == "RGB":  # the model consumes BGR
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        if self.prompt_embedding is not None:
            prompt = self.prompt_embedding.resolve(prompt)
        fields, names = normalize_prompt(prompt, self.default_names)
        return {"image": image, "height": height, "width": width, **fields}, names

    def __call__(self, original_image, prompt=None):
        """
        Args:
            original_image (np.ndarray): (H, W, C) image in ``cfg.INPUT.FORMAT`` order.
            prompt: see the module docstring.
        Returns:
            dict: ``{"instances": Instances, "phrases": list[str]}``; ``pred_classes`` indexes
            ``phrases``; boxes in original-image pixels.
        """
        return self.predict_batch([original_image], [prompt])[0]

    def predict_batch(self, images, prompts=None):
        """Run several images, each with its own prompt (``prompts[i]`` for ``images[i]``;
        None: the default vocabulary for all).

        Images whose resized sizes are equal run through the model together. Others run
        separately: the fusion attention and the global-pooling attentions see zero padding
        (spec §12.11), so padding an image to a larger batch size would change its detections.
        Every image thus gets exactly the detections it gets alone.

        Returns:
            list[dict]: one ``{"instances", "phrases"}`` per image.
        """
        prompts = [None] * len(images) if prompts is None else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        prepared = [self.prepare(img, p) for img, p in zip(images, prompts, strict=True)]
        groups = {}
        for i, (data, _) in enumerate(prepared):
            groups.setdefault(tuple(data["image"].shape[-2:]), []).append(i)
        results = [None] * len(images)
        with torch.no_grad():
            for indices in groups.values():
                outputs = self.model([prepared[i][0] for i in indices])
                for i, out in zip(indices, outputs, strict=True):
                    results[i] = {
                        "instances": out["instances"].to("cpu"),
                        "phrases": prepared[i][1],
                    }
        return results


def read_image(path, format="BGR"):
    """Read an image file for the predictor (Detectron2's reader, EXIF orientation applied)."""
    return utils.read_image(path, format=format)
