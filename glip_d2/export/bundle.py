"""The export folder: the ONNX graph plus everything the runtime needs, offline.

``DIR/model.onnx`` (:mod:`glip_d2.export.graph`), ``DIR/glip_export.json`` (the config facts
the runtime reads), ``DIR/tokenizer/`` (the text encoder's tokenizer files),
``DIR/glip_runtime/`` (a copy of the package :mod:`glip_d2.export.runtime`) and
``DIR/config.yaml`` (the full config, for the record).
"""

import json
import shutil
from pathlib import Path

from detectron2.data import MetadataCatalog

from . import runtime
from .graph import DEFAULT_OPSET, export_onnx

__all__ = ["FORMAT_VERSION", "RUNTIME_DIR", "export_folder", "runtime_config"]

FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
RUNTIME_DIR = "glip_runtime"
TOKENIZER_DIR = "tokenizer"


def runtime_config(cfg, model):
    """The facts of ``cfg`` and ``model`` the runtime needs (``glip_export.json``)."""
    lang = model.language_backbone
    names = []
    if len(cfg.DATASETS.TEST):
        names = list(getattr(MetadataCatalog.get(cfg.DATASETS.TEST[0]), "thing_classes", []) or [])
    return {
        "format_version": FORMAT_VERSION,
        "onnx_file": ONNX_FILE,
        "tokenizer_file": f"{TOKENIZER_DIR}/tokenizer.json",
        "input_format": cfg.INPUT.FORMAT,
        "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
        "size_divisibility": int(model.size_divisibility),
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "max_query_len": int(lang.max_query_len),
        "pad_to_max": bool(lang.pad_to_max),
        "pad_token_id": int(lang.tokenizer.pad_token_id or 0),
        "separator": model.prompts.separator,
        "chunk_size": int(model.prompts.chunk_size),
        "score_threshold": float(model.post_processor.score_threshold),
        "pre_nms_top_n": int(model.post_processor.pre_nms_top_n),
        "nms_threshold": float(model.post_processor.nms_threshold),
        "detections_per_prompt": int(model.post_processor.detections_per_image),
        "default_class_names": names,
        "text_model": cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME,
        "weights": cfg.MODEL.WEIGHTS,
        "precision": "float32",
    }


def export_folder(cfg, model, output_dir, opset=DEFAULT_OPSET, check=True):
    """Write the export folder of ``model`` (built from ``cfg``, weights loaded).

    Args:
        output_dir (str): created if missing; existing files of the same names are replaced.
        opset (int), check (bool): see :func:`~glip_d2.export.graph.export_onnx`.
    Returns:
        dict: the runtime config written, with the export's ``opset``, ``trace_size`` and
        ``check`` (largest differences between onnxruntime and PyTorch at a second size).
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    info = runtime_config(cfg, model)
    info.update(export_onnx(model, out / ONNX_FILE, opset=opset, check=check))
    tokenizer_dir = out / TOKENIZER_DIR
    model.language_backbone.tokenizer.save_pretrained(str(tokenizer_dir))
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise RuntimeError(f"the tokenizer wrote no tokenizer.json to {tokenizer_dir}")
    if (out / RUNTIME_DIR).exists():
        shutil.rmtree(out / RUNTIME_DIR)
    shutil.copytree(
        Path(runtime.__file__).parent,
        out / RUNTIME_DIR,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (out / "config.yaml").write_text(cfg.dump())
    with open(out / runtime.EXPORT_FILE, "w") as f:
        json.dump(info, f, indent=2)
    return info
