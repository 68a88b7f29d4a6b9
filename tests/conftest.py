"""Shared fixtures: the official reference outputs and tiny configs."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The official outputs live beside the development checkout (../shared); a user's clone has
# none, and the tests that need them skip with that reason.
REFERENCE_DIR = Path(
    os.environ.get("GLIP_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference" / "official_glip_small")
)


@pytest.fixture(scope="session")
def reference_dir():
    if not (REFERENCE_DIR / "inputs.pt").is_file():
        pytest.skip(f"official reference outputs not found at {REFERENCE_DIR} (set GLIP_REFERENCE_DIR)")
    return REFERENCE_DIR


def load_reference(reference_dir, name):
    """Load one reference file (inputs, outputs_eval, outputs_train, state_dict_official_no_lang)."""
    return torch.load(reference_dir / f"{name}.pt", map_location="cpu", weights_only=True)
