"""A local web page for trying a GLIP model: upload an image, type a prompt, see the boxes.

Started by ``demo/web.py`` (``make web``). Needs the ``web`` extra (FastAPI, uvicorn,
python-multipart): ``pip install 'glip_d2[web]'``.
"""

from importlib.util import find_spec

_MISSING = [
    package
    for package, module in (
        ("fastapi", "fastapi"),
        ("uvicorn", "uvicorn"),
        ("python-multipart", "python_multipart"),
    )
    if find_spec(module) is None
]
if _MISSING:
    raise ImportError(
        f"the web demo needs {', '.join(_MISSING)}, which are not installed: "
        "pip install 'glip_d2[web]'"
    )

from .app import create_app  # noqa: E402  (after the check above)
from .inputs import Example, decode_image, load_examples, parse_prompt_text  # noqa: E402

__all__ = ["Example", "create_app", "decode_image", "load_examples", "parse_prompt_text"]
