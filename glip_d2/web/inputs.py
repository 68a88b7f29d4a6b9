"""What a person types or uploads on the web page, turned into predictor inputs.

Every function raises ``ValueError`` with a message meant for the page (it names the file or
the prompt at fault and says what is expected).
"""

import io
import json
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["PROMPT_KINDS", "Example", "decode_image", "load_examples", "parse_prompt_text"]

# Prompt kinds offered on the page: form value -> label.
PROMPT_KINDS = {
    "names": "Class names",
    "caption": "Caption with [phrases]",
    "sentence": "Free sentence",
}
_NAME_SEPARATORS = re.compile(r"[\n.,;]")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def parse_prompt_text(text, kind="names"):
    """The :class:`~glip_d2.predictor.GLIPPredictor` prompt for the text of the prompt box.

    Args:
        text (str): what was typed.
        kind (str): ``"names"``: class names separated by ``.``, ``,``, ``;`` or new lines
            (``"red circle. blue star"``); ``"caption"``: a caption whose phrases are marked in
            square brackets (``"a [red circle] left of a [blue star]"``); ``"sentence"``: a free
            sentence, split into noun phrases by the predictor.
    Returns:
        list[str] | dict | str: class names, a ``{"caption", "phrase_spans", "phrases"}`` dict
        or the sentence.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {sorted(PROMPT_KINDS)}")
    text = (text or "").strip()
    if not text:
        raise ValueError(
            "The prompt is empty: type class names (e.g. 'red circle. blue star'), a caption "
            "with [bracketed] phrases, or a sentence."
        )
    if kind == "caption":
        return _bracketed_caption(text)
    if kind == "sentence":
        return " ".join(text.split())
    names = (" ".join(n.split()) for n in _NAME_SEPARATORS.split(text))
    names = list(dict.fromkeys(n for n in names if n))  # drop empties and repeats, keep order
    if not names:
        raise ValueError(
            f"No class name in the prompt {text!r}: separate names with '.', ',', ';' or new "
            "lines, e.g. 'red circle. blue star'."
        )
    return names


def _bracketed_caption(text):
    """``"a [red circle] and a [blue star]"`` -> caption without brackets, one phrase per
    distinct bracketed text (a repeated phrase gets one more span of the same phrase)."""
    caption, spans, start = [], {}, None
    for pos, char in enumerate(text):
        if char == "[":
            if start is not None:
                raise ValueError(f"Nested '[' at character {pos} of the caption {text!r}.")
            start = len(caption)
        elif char == "]":
            if start is None:
                raise ValueError(f"']' without '[' at character {pos} of the caption {text!r}.")
            phrase = "".join(caption[start:])
            if not phrase.strip():
                raise ValueError(f"Empty [] phrase at character {pos} of the caption {text!r}.")
            begin = start + len(phrase) - len(phrase.lstrip())  # spans exclude spaces
            spans.setdefault(phrase.strip(), []).append([begin, start + len(phrase.rstrip())])
            start = None
        else:
            caption.append(char)
    if start is not None:
        raise ValueError(f"A '[' is never closed in the caption {text!r}.")
    if not spans:
        raise ValueError(
            f"No phrase is marked in the caption {text!r}: put the phrases to detect in square "
            "brackets, e.g. 'a [red circle] left of a [blue star]'."
        )
    return {
        "caption": "".join(caption),
        "phrase_spans": list(spans.values()),
        "phrases": list(spans),
    }


def decode_image(data, name="the upload"):
    """Decode an uploaded file into the predictor's (H, W, 3) uint8 BGR array.

    Any format Pillow reads; EXIF orientation is applied (as Detectron2's ``read_image``),
    transparent pixels are drawn on white, grey and 16-bit images become 8-bit colour.

    Returns:
        (np.ndarray, str): the BGR image and a short description ("PNG 320x240, RGBA").
    """
    if not data:
        raise ValueError(f"{name!r} is empty (0 bytes): choose an image file.")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            fmt, mode = opened.format, opened.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(
            f"{name!r} is not an image that can be read (PNG, JPEG, BMP, GIF, WebP, TIFF ...): {e}"
        ) from e
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name!r} is too large to decode: {e}") from e
    if image.mode in _HIGH_DEPTH_MODES:  # 16-bit / float: stretch to 0-255
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / (high - low if high > low else 1.0))
        image = Image.fromarray(values.round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    return np.ascontiguousarray(rgb[:, :, ::-1]), f"{fmt or 'image'} {width}x{height}, {mode}"


@dataclass(frozen=True)
class Example:
    """An example image offered on the page and a prompt naming what it shows."""

    name: str
    path: str
    prompt: str


def load_examples(root, split="test_heldout", count=6):
    """The first ``count`` images of a ``glip_synth`` split, each with its classes as prompt.

    Args:
        root (str): a glip_synth folder (``datasets/prepare_glip_synth.py``).
    Returns:
        list[Example]: empty when ``root`` holds no such split.
    """
    annotations = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(annotations):
        return []
    with open(annotations) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = {}
    for ann in coco["annotations"]:
        present = classes.setdefault(ann["image_id"], [])
        if names[ann["category_id"]] not in present:
            present.append(names[ann["category_id"]])
    return [
        Example(
            name=f"{split}/{img['file_name']}",
            path=os.path.join(root, "images", split, img["file_name"]),
            prompt=". ".join(classes.get(img["id"], [])),
        )
        for img in coco["images"][:count]
    ]
