"""Run a GLIP model exported by ``python -m glip_d2.export`` with onnxruntime.

This package needs numpy, onnxruntime and tokenizers only (no torch, no glip_d2); the export
command copies it into the export folder as the package ``glip_runtime``::

    from glip_runtime import GLIPRuntime        # with the export folder on the import path
    runtime = GLIPRuntime("export_dir")         # model.onnx, glip_export.json, tokenizer/
    out = runtime(image, ["red circle", "blue star"])
    out["boxes"]    # (K, 4) float32 x1, y1, x2, y2 in original-image pixels ("+1" convention)
    out["scores"]   # (K,) float32
    out["labels"]   # (K,) int64, index into out["phrases"]
    out["phrases"]  # the prompt's phrase names

``image``: a numpy (H, W, 3) array, uint8 or float with values 0-255, in the export's
``input_format`` (``INPUT.FORMAT``, BGR unless the config says otherwise; ``format="RGB"``
for e.g. ``np.asarray(PIL.Image.open(f).convert("RGB"))``). ``prompt``: a list of class names
(joined "a. b. c" as glip_d2 does, split into several prompts when they exceed the token
limit), ``{"caption": str, "phrase_spans": [[[start, end), ...], ...]}`` (optional
``"phrases"``: names), a ``(caption, phrase_spans)`` pair, or None for the exported default
class names. Free sentences need spaCy's noun phrases: use ``GLIPPredictor`` for them.
Bad input raises ``TypeError`` / ``ValueError`` naming the image, prompt or phrase at fault.

The graph ``model.onnx`` (batch 1; any height and width that are multiples of
``size_divisibility``, any token length):

* inputs: ``image`` (1, 3, H, W) float32, BGR ``(pixel - pixel_mean) / pixel_std`` zero-padded
  at the bottom and right; ``input_ids``, ``attention_mask`` (1, L) int64;
* outputs: ``logits`` (1, N, L) token logits of every location; ``boxes`` (1, N, 4) boxes decoded
  against the anchors (padded-image pixels, not clipped); ``centerness`` (1, N) logits;
  ``level_sizes`` (levels,) int64 locations per pyramid level (N = their sum).

Every step reproduces glip_d2's inference (``GLIPPredictor``): the official resize rule with
detectron2's resize (Pillow's bilinear filter on uint8 images, reproduced here in integer
arithmetic; torch's bilinear interpolation on float images); detection prompts, chunks and
positive maps of ``glip_d2.text``; phrase scores, thresholds, per-level top-k, clipping,
class-aware NMS with the legacy "+1" IoU and the per-prompt cap of
``glip_d2/modeling/postprocess.py``; boxes scaled back to the original image. A vocabulary
split into several prompts runs the whole graph once per prompt (each prompt keeps
``detections_per_prompt`` detections; no NMS across prompts, as in glip_d2).

Modules: ``images`` (checks, resize), ``prompts`` (tokens, chunks, positive maps),
``detections`` (phrase scores, top-k, NMS, cap).
"""

import json
import os

import numpy as np
import onnxruntime

from .detections import detections, nms_legacy
from .images import check_image, glip_resize_shape, resize_image
from .prompts import PromptEncoder

__all__ = [
    "EXPORT_FILE",
    "GLIPRuntime",
    "PromptEncoder",
    "detections",
    "glip_resize_shape",
    "nms_legacy",
    "resize_image",
]

EXPORT_FILE = "glip_export.json"


class GLIPRuntime:
    """An exported GLIP model: ``runtime(image, prompt)`` -> detections (module docstring)."""

    def __init__(self, folder, providers=None, session_options=None):
        """
        Args:
            folder (str): the export folder (``glip_export.json``, ``model.onnx``, tokenizer).
            providers (list | None): onnxruntime execution providers (default: CPU).
            session_options (onnxruntime.SessionOptions | None): e.g. thread counts.
        """
        path = os.path.join(folder, EXPORT_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: not a folder written by python -m glip_d2.export"
            )
        with open(path) as f:
            self.config = json.load(f)
        c = self.config
        self.prompts = PromptEncoder(
            os.path.join(folder, c["tokenizer_file"]),
            c["max_query_len"],
            c["separator"],
            c["chunk_size"],
            c["pad_to_max"],
            c["pad_token_id"],
        )
        self.session = onnxruntime.InferenceSession(
            os.path.join(folder, c["onnx_file"]),
            sess_options=session_options,
            providers=providers or ["CPUExecutionProvider"],
        )
        self.pixel_mean = np.asarray(c["pixel_mean"], np.float32)
        self.pixel_std = np.asarray(c["pixel_std"], np.float32)

    def preprocess(self, image, format=None):
        """(1, 3, H, W) float32 graph input and the resized image's (h, w)."""
        check_image(image)
        if (format or self.config["input_format"]) == "RGB":  # the model reads BGR
            image = image[:, :, ::-1]
        c = self.config
        height, width = image.shape[:2]
        if c["min_size_test"] > 0:
            new_h, new_w = glip_resize_shape(height, width, c["min_size_test"], c["max_size_test"])
            if (new_h, new_w) != (height, width):
                image = resize_image(image, new_h, new_w)
        h, w = image.shape[:2]
        normalised = (image.astype(np.float32) - self.pixel_mean) / self.pixel_std
        div = max(c["size_divisibility"], 1)
        padded = np.zeros((1, 3, -(-h // div) * div, -(-w // div) * div), np.float32)
        padded[0, :, :h, :w] = normalised.transpose(2, 0, 1)
        return padded, (h, w)

    def run(self, image_tensor, prompt_pass):
        """The graph's outputs (a dict) for one preprocessed image and one prompt pass."""
        feeds = {
            "image": image_tensor,
            "input_ids": prompt_pass.input_ids,
            "attention_mask": prompt_pass.attention_mask,
        }
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def __call__(self, image, prompt=None, format=None):
        """Detections of ``prompt`` in ``image`` (module docstring); boxes in its pixels."""
        tensor, size = self.preprocess(image, format)  # the image is checked first
        passes, names = self.prompts.passes(prompt, self.config["default_class_names"])
        c = self.config
        results = []
        for p in passes:  # one graph run per prompt (chunks of a long vocabulary)
            boxes, scores, labels = detections(
                self.run(tensor, p),
                p.positive_map,
                size,
                score_threshold=c["score_threshold"],
                pre_nms_top_n=c["pre_nms_top_n"],
                nms_threshold=c["nms_threshold"],
                detections_per_prompt=c["detections_per_prompt"],
            )
            results.append((boxes, scores, p.phrase_ids[labels]))
        boxes, scores, labels = (np.concatenate(v) for v in zip(*results, strict=True))
        height, width = image.shape[:2]
        h, w = size
        scale = np.asarray([width / w, height / h, width / w, height / h], np.float32)
        return {"boxes": boxes * scale, "scores": scores, "labels": labels, "phrases": names}
