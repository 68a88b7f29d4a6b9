"""glip_d2: GLIP grounded language-image detection as a Detectron2 extension.

Importing the package registers its backbones, language backbones, meta-architecture and
datasets on Detectron2's registries and catalogs.
"""

from . import (
    data,  # noqa: F401  registers datasets
    modeling,  # noqa: F401  (registration)
)
from .config import add_glip_config

__all__ = ["add_glip_config"]
