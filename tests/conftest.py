"""Test-wide setup: no network, seeded RNGs, the shared reference folder."""

import os

# huggingface_hub reads these once, on import: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("IB_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The paper authors' mod-add checkpoints; skip where they are not beside the checkout."""
    if not (REFERENCE / "modadd_seed0" / "weights.npz").exists():
        pytest.skip(
            f"reference checkpoints not found at {REFERENCE} (set IB_REFERENCE_DIR to the "
            "folder holding modadd_seed*/; they ship beside the checkout for developers and CI)"
        )
    return REFERENCE
