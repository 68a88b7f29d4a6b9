"""``GLIPPredictor``: grounded detection on single images, the way Detectron2's
``DefaultPredictor`` does plain detection.

::

    predictor = GLIPPredictor(cfg)
    out = predictor(image_bgr, ["person", "bicycle"])          # class names
    out = predictor(image_bgr, {"caption": "a red car", "phrase_spans": [[[0, 9]]]})
    out = predictor(image_bgr, "two dogs play with a red ball")  # a free sentence
    out["instances"].pred_classes  # index into out["phrases"]

The accepted prompt forms are those of :func:`glip_d2.text.normalize_prompt`; ``None`` means the
``thing_classes`` of ``cfg.DATASETS.TEST[0]``'s metadata. A free sentence is split into noun
phrases by spaCy when it is installed; otherwise (or with ``TEST.GLIP.PHRASE_FINDER "model"``)
the model finds the phrases itself, from its token scores above ``TEST.GLIP.TEXT_THRESHOLD``
(glip_d2/modeling/phrase_grounding.py), in the same forward pass that detects them.

Images are numpy arrays (H, W, 3) in ``cfg.INPUT.FORMAT`` order, ``uint8`` (as ``cv2.imread``
and Detectron2's ``DefaultPredictor``) or float with values 0-255. Everything else is refused
before resizing, with a message saying how to pass it (:mod:`glip_d2.image_input`): grey
(H, W) / (H, W, 1) and RGBA (H, W, 4) arrays (reported with their own shape), ``uint16``,
``bool`` and other integer dtypes, torch tensors and PIL images, NaN/Inf values, float values
outside 0-255, and float images whose values all lie in [0, 1] (a normalised image).

The predictor keeps the text features of its last ``MODEL.GLIP.PROMPT_CACHE_SIZE`` prompt
strings (:class:`~glip_d2.modeling.TextFeatureCache`): a video or an image list with one
vocabulary, or the chunks of a large one, is encoded once. The cache empties itself when the
text encoder's weights change (training steps, loading); see the class for the exact rule.
``MODEL.GLIP.INFERENCE_DTYPE`` selects bf16/fp16 inference.
"""

import torch
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model

from . import modeling  # noqa: F401  (registers GLIPDetector and the backbones)
from .checkpoint import GLIPCheckpointer, load_prompt_embedding, use_text_encoder_from_weights
from .data.transforms import GLIPResizeShortestEdge
from .image_input import check_image_array
from .modeling import TextFeatureCache
from .modeling.phrase_grounding import ground_captions
from .text import normalize_prompt, spacy_available

PHRASE_FINDERS = ("auto", "spacy", "model")

__all__ = ["GLIPPredictor", "read_image"]


class GLIPPredictor:
    """Builds the model from ``cfg``, loads ``cfg.MODEL.WEIGHTS`` (official or glip_d2 files),
    and runs single-image or batched inference on BGR (``cfg.INPUT.FORMAT``) numpy images.

    Images are resized like the official evaluation (``GLIPResizeShortestEdge`` with
    ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); boxes come back in original-image pixels.
    When ``MODEL.WEIGHTS`` holds the text encoder (official files do), the model is built with
    ``MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT``, so nothing is downloaded.

    It does not subclass D2's ``DefaultPredictor``: the resize rule, the checkpointer and the
    call (a prompt with every image, batches of images) all differ from it.
    """

    def __init__(self, cfg, *, ema=False, model=None, prompt_embedding=None):
        """
        Args:
            cfg (CfgNode): a glip_d2 config.
            ema (bool): from an official file, use ``model_ema`` instead of ``model``.
            model (nn.Module or None): an already built (e.g. just trained) model to run
                instead of building one and loading ``MODEL.WEIGHTS``; it is put in eval mode.
            prompt_embedding (str | None): a tuned prompt embedding file loaded after
                ``MODEL.WEIGHTS`` (default ``MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING``). It
                changes the tuned prompt only; class names equal to the tuned vocabulary are
                turned into the tuned caption (glip_d2/checkpoint/prompt_embedding.py).
        """
        self.cfg = cfg.clone()
        self.cfg.defrost()
        if prompt_embedding is not None:
            self.cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING = str(prompt_embedding)
        if model is None:
            use_text_encoder_from_weights(self.cfg)
        self.cfg.freeze()
        if model is None:
            model = build_model(self.cfg)
            GLIPCheckpointer(
                model,
                ema=ema,
                text_encoder_from_checkpoint=self.cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT,
                allow_unexpected_keys=self.cfg.MODEL.GLIP.ALLOW_UNEXPECTED_KEYS,
            ).load(self.cfg.MODEL.WEIGHTS)
        self.model = model.eval()
        self.text_cache = TextFeatureCache(self.cfg.MODEL.GLIP.PROMPT_CACHE_SIZE)
        self.metadata = (
            MetadataCatalog.get(self.cfg.DATASETS.TEST[0]) if len(self.cfg.DATASETS.TEST) else None
        )
        path = self.cfg.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING
        self.prompt_embedding = load_prompt_embedding(self.model, path) if path else None
        self.aug = GLIPResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST],
            self.cfg.INPUT.MAX_SIZE_TEST,
        )
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        finder = self.cfg.TEST.GLIP.PHRASE_FINDER
        if finder not in PHRASE_FINDERS:
            raise ValueError(f"TEST.GLIP.PHRASE_FINDER must be one of {PHRASE_FINDERS}: {finder!r}")
        self.phrase_finder = finder
        self.text_threshold = float(self.cfg.TEST.GLIP.TEXT_THRESHOLD)

    def model_finds_phrases(self, prompt):
        """Whether the phrases of ``prompt`` come from the model (a free sentence without spaCy,
        or ``TEST.GLIP.PHRASE_FINDER "model"``)."""
        return isinstance(prompt, str) and (
            self.phrase_finder == "model"
            or (self.phrase_finder == "auto" and not spacy_available())
        )

    @property
    def default_names(self):
        """The class names used when no prompt is given (``DATASETS.TEST[0]`` metadata)."""
        return list(getattr(self.metadata, "thing_classes", None) or [])

    def prepare(self, original_image, prompt=None, where="image 0"):
        """The model input dict of one image and prompt, and the phrase names (None when the
        model finds the phrases: the input then holds the ``caption`` only).

        ``where`` names the image in errors (:func:`~glip_d2.image_input.check_image_array`).
        """
        check_image_array(original_image, where)
        if self.input_format == "RGB":  # the model consumes BGR
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        if self.prompt_embedding is not None:
            prompt = self.prompt_embedding.resolve(prompt)
        if self.model_finds_phrases(prompt):
            if not prompt.strip():
                raise ValueError(f"a free-sentence prompt must be a non-empty string: {prompt!r}")
            fields, names = {"caption": prompt}, None
        else:
            fields, names = normalize_prompt(prompt, self.default_names)
        return {"image": image, "height": height, "width": width, **fields}, names

    def __call__(self, original_image, prompt=None):
        """
        Args:
            original_image (np.ndarray): (H, W, 3) image in ``cfg.INPUT.FORMAT`` order, uint8
                or float 0-255 (see the module docstring for what is refused).
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
        (docs/OFFICIAL_BEHAVIOURS.md, "Padding changes detections"), so padding an image to a
        larger batch size would change its detections.
        Every image thus gets exactly the detections it gets alone (prompts of different
        lengths too: padded text tokens have no effect, docs/DESIGN.md "Text length"). Free
        sentences whose phrases the model finds run as their own sub-batch
        (:func:`ground_captions`).

        Returns:
            list[dict]: one ``{"instances", "phrases"}`` per image; a prompt that became a
            caption (a sentence, or a caption with spans) also gives ``caption`` and
            ``phrase_spans`` (phrase ``k``'s spans in the caption).
        """
        prompts = [None] * len(images) if prompts is None else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        prepared = [
            self.prepare(img, p, f"image {i}")
            for i, (img, p) in enumerate(zip(images, prompts, strict=True))
        ]
        groups = {}
        for i, (data, _) in enumerate(prepared):
            groups.setdefault(tuple(data["image"].shape[-2:]), []).append(i)
        if self.model.training:
            raise RuntimeError("GLIPPredictor: the model is in training mode; call model.eval()")
        results = [None] * len(images)
        with torch.inference_mode():
            for group in groups.values():
                given = [i for i in group if prepared[i][1] is not None]
                found = [i for i in group if prepared[i][1] is None]
                if given:
                    outputs = self.model.inference(
                        [prepared[i][0] for i in given], text_cache=self.text_cache
                    )
                    for i, out in zip(given, outputs, strict=True):
                        results[i] = {
                            "instances": out["instances"].to("cpu"),
                            "phrases": prepared[i][1],
                        }
                        if "phrase_spans" in prepared[i][0]:
                            results[i]["caption"] = prepared[i][0]["caption"]
                            results[i]["phrase_spans"] = prepared[i][0]["phrase_spans"]
                if found:
                    outputs = ground_captions(
                        self.model,
                        [prepared[i][0] for i in found],
                        self.text_threshold,
                        text_cache=self.text_cache,
                    )
                    for i, out in zip(found, outputs, strict=True):
                        results[i] = {
                            "instances": out["instances"].to("cpu"),
                            "phrases": out["phrases"],
                            "caption": prepared[i][0]["caption"],
                            "phrase_spans": out["phrase_spans"],
                        }
        return results


def read_image(path, format="BGR"):
    """Read an image file for the predictor (Detectron2's reader, EXIF orientation applied)."""
    return utils.read_image(path, format=format)
