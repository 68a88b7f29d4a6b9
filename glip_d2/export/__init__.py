"""Export to ONNX with the prompt as a graph input (``python -m glip_d2.export``).

* :mod:`.graph`: the traceable part of inference (``GLIPExportModule``) and ``export_onnx``;
* :mod:`.bundle`: the export folder (graph, runtime config, tokenizer, runtime copy);
* :mod:`.runtime`: the standalone runtime (numpy, onnxruntime, tokenizers; no torch);
* ``__main__``: the command line.
"""

from .bundle import export_folder, runtime_config
from .graph import GLIPExportModule, check_onnx, example_image_size, export_onnx

__all__ = [
    "GLIPExportModule",
    "check_onnx",
    "example_image_size",
    "export_folder",
    "export_onnx",
    "runtime_config",
]
