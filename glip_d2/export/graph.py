"""The traceable part of GLIP inference and its ONNX export.

``GLIPExportModule`` runs what ``GLIPDetector.inference`` runs on the tensors of one image and
one prompt: the visual backbone, the anchors, the text encoder, the fused head and the box
decoding. What stays outside (resizing, tokenization, positive maps, phrase scores, NMS) is
the runtime's (:mod:`glip_d2.export.runtime`).

The graph has two inputs of free size: the image (any height and width that are multiples of
the size divisibility) and the prompt (any token length). Everything that depends on a size is
computed from tensor shapes inside the traced code, so the exported graph recomputes it; the
trace is taken at a size where every size-dependent branch takes the path that is correct for
all sizes (:func:`example_image_size`), and :func:`check_onnx` verifies the file at a second
size and prompt length.
"""

import contextlib
import warnings

import numpy as np
import torch
from torch import nn
from torch.onnx.operators import shape_as_tensor

from ..modeling.dyconv import ModulatedDeformConv3x3
from ..modeling.fusion import BiMultiHeadAttention

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "GLIPExportModule",
    "check_onnx",
    "example_image_size",
    "export_onnx",
]

INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_NAMES = ("logits", "boxes", "centerness", "level_sizes")
DEFAULT_OPSET = 17


class GLIPExportModule(nn.Module):
    """One image and one prompt -> GLIP's dense outputs (the graph that is exported).

    The submodules are the model's own (shared, not copied). The batch is 1: detectron2's
    ``window_reverse`` (Swin) computes the batch size with ``int()``, which a trace keeps as a
    constant; the runtime runs one image and one prompt per call anyway.
    """

    def __init__(self, model):
        """
        Args:
            model (GLIPDetector): a built model in eval mode.
        """
        super().__init__()
        if model.language_backbone.tuned_input_ids is not None:
            raise ValueError(
                "a model with a loaded prompt embedding (MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING) "
                "cannot be exported: the tuned prompt is chosen outside the graph; export the base "
                "model, or merge the prompt into the weights and export with TUNABLE_LINEAR"
            )
        self.backbone = model.backbone
        self.language_backbone = model.language_backbone
        self.head = model.head
        self.anchor_generator = model.anchor_generator
        self.box_coder = model.post_processor.box_coder
        self.in_features = list(model.in_features)

    def forward(self, image, input_ids, attention_mask):
        """
        Args:
            image (Tensor): (1, 3, H, W) float32, BGR ``(pixel - mean) / std``, zero-padded so
                that H and W are multiples of the size divisibility.
            input_ids, attention_mask (Tensor): (1, L) int64 tokens of the prompt.
        Returns:
            tuple: ``logits`` (1, N, L) token logits; ``boxes`` (1, N, 4) every location's box
            decoded against its anchor (legacy inclusive x1, y1, x2, y2 in the padded image's
            pixels, not clipped); ``centerness`` (1, N) logits; ``level_sizes`` (levels,) int64
            locations per pyramid level. N runs over P3..P7, row-major within a level.
        """
        feats = self.backbone(image)
        features = [feats[f] for f in self.in_features]
        anchors = torch.cat([b.tensor for b in self.anchor_generator(features)])
        text = self.language_backbone(input_ids, attention_mask)
        out = self.head(features, text)
        boxes = self.box_coder.decode(out["bbox_reg"][0], anchors)
        sizes = torch.stack([shape_as_tensor(f)[2:].prod() for f in features])
        return out["logits"], boxes[None], out["centerness"][..., 0], sizes


@contextlib.contextmanager
def exportable_ops(model):
    """Within the block, the fusion uses the reassociated product order and the deformable
    convs the gather + matrix product formulation: both give the model's result up to float
    rounding (tests/test_fusion_reassociated.py, tests/test_deform_conv.py) and export to plain
    ONNX ops. The model's own settings come back afterwards."""
    saved = []
    for module in model.modules():
        if isinstance(module, BiMultiHeadAttention):
            saved.append((module, module.impl))
            module.impl = "reassociated"  # "auto"'s choice would be traced at one size
        elif isinstance(module, ModulatedDeformConv3x3):
            saved.append((module, module.impl))
            module.impl = "fast"  # torchvision's deform_conv2d has no ONNX export
    try:
        yield
    finally:
        for module, impl in saved:
            module.impl = impl


def _swin_stage_sizes(size, bottom_up):
    """Feature sizes of the 4 Swin stages for an input side of ``size``."""
    side = -(-size // bottom_up.patch_embed.patch_size[0])
    out = []
    for _ in range(4):
        out.append(side)
        side = (side + 1) // 2
    return out


def example_image_size(model, minimum=64):
    """(H, W) to trace at: distinct multiples of the size divisibility where every Swin stage
    needs padding to its window size.

    Swin's block crops its padding under ``if pad_r > 0 or pad_b > 0`` (detectron2's
    ``SwinTransformerBlock.forward``); a trace without padding would lack the crop. Cropping
    nothing is harmless, so a trace with padding everywhere is right for every size.
    """
    div = max(int(model.size_divisibility), 1)
    bottom_up = getattr(model.backbone, "bottom_up", None)
    window = getattr(bottom_up, "window_size", None)

    def good(size):
        if window is None or not hasattr(bottom_up, "patch_embed"):
            return True
        return all(s % window for s in _swin_stage_sizes(size, bottom_up))

    sizes, size = [], -(-minimum // div) * div
    while len(sizes) < 2:
        if good(size):
            sizes.append(size)
        size += div
    return sizes[0], sizes[1]


def _example_text(model, captions=("a b c d e", "a")):
    """(1, L) ids and mask of a padded prompt: the trace then holds the text mask's effect
    (with an all-ones mask an encoder may skip it)."""
    tokens = model.language_backbone.tokenize(list(captions), pad_to_max=False)
    return tokens["input_ids"][1:], tokens["attention_mask"][1:]


def export_onnx(model, path, opset=DEFAULT_OPSET, check=True):
    """Export ``model`` (a GLIPDetector) to the ONNX file ``path``.

    Args:
        model (GLIPDetector): built and loaded; it is put in eval mode on the CPU in fp32.
        path (str): the .onnx file to write.
        opset (int): ONNX opset (17 runs on onnxruntime >= 1.13).
        check (bool): run :func:`check_onnx` at a second image size and prompt length.
    Returns:
        dict: ``{"opset", "trace_size", "check"}`` (the check's largest differences, or None).
    """
    model = model.eval().to("cpu").float()
    module = GLIPExportModule(model).eval()
    height, width = example_image_size(model)
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    ids, mask = _example_text(model)
    dynamic = {
        "image": {2: "height", 3: "width"},
        "input_ids": {1: "length"},
        "attention_mask": {1: "length"},
        "logits": {1: "locations", 2: "length"},
        "boxes": {1: "locations"},
        "centerness": {1: "locations"},
    }
    with exportable_ops(model), torch.no_grad(), warnings.catch_warnings():
        # Tracer notes about Python values taken from shapes: those sizes are recomputed by
        # the graph (the module docstring); check_onnx tests the file at other sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (image, ids, mask),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    result = {"opset": opset, "trace_size": [height, width], "check": None}
    if check:
        size = (height + model.size_divisibility, width + 2 * model.size_divisibility)
        with exportable_ops(model):
            result["check"] = check_onnx(module, path, size, ("a b c d e f g h", "a"), 0)
    return result


def check_onnx(module, path, image_size, captions, row, tolerance=1e-3):
    """Run ``path`` with onnxruntime and ``module`` with torch on the same inputs; raise when
    they differ (a size baked into the trace gives wrong shapes or values).

    Args:
        image_size (tuple[int, int]): padded (H, W) of a random image.
        captions (list[str]): tokenized together (padded to the longest); ``row`` is used.
        tolerance (float): on the largest difference relative to each output's magnitude.
    Returns:
        dict: output name -> largest absolute difference.
    """
    import onnxruntime

    tokens = module.language_backbone.tokenize(list(captions), pad_to_max=False)
    ids, mask = tokens["input_ids"][row : row + 1], tokens["attention_mask"][row : row + 1]
    image = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [t.numpy() for t in module(image, ids, mask)]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(INPUT_NAMES, (image.numpy(), ids.numpy(), mask.numpy()), strict=True))
    actual = session.run(list(OUTPUT_NAMES), feeds)
    diffs = {}
    for name, exp, act in zip(OUTPUT_NAMES, expected, actual, strict=True):
        if exp.shape != act.shape:
            raise RuntimeError(
                f"exported graph {path}: output {name!r} has shape {act.shape} at image size "
                f"{image_size} and {ids.shape[1]} tokens, PyTorch gives {exp.shape}"
            )
        diff = float(np.abs(exp.astype(np.float64) - act).max()) if exp.size else 0.0
        scale = max(float(np.abs(exp).max()) if exp.size else 0.0, 1.0)
        if not diff <= tolerance * scale:
            raise RuntimeError(
                f"exported graph {path}: output {name!r} differs from PyTorch by {diff:g} "
                f"(values up to {scale:g}) at image size {image_size}, {ids.shape[1]} tokens"
            )
        diffs[name] = diff
    return diffs
