"""Test-wide setup: no network, seeded RNGs, the shared reference folder and its builds."""

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


@pytest.fixture(scope="session")
def reference_builds(reference_dir):
    """``reference_builds(seed)``: LIB and PCA on a reference mod-add checkpoint, built once per
    test run and shared by every test that reproduces method §C and §G.

    As the reference did: float64, the train split of ``modadd_train_split.npz`` in batches of
    1024, absolute τ = 1e-15. Returns a dict with the ``weights``, the float64 ``model``, all
    ``tokens``/``labels``, the ``train`` and ``test`` indices, the train ``acts`` and ``stats``,
    and per method (``lib``, ``pca``) the tuple ``(bases, m_dash, edges)``. Treat it as
    read-only.
    """
    from interaction_basis.data.modadd import build_modadd_dataset, compute_modadd_split
    from interaction_basis.lib.basis import Truncation
    from interaction_basis.lib.fit import build_in_memory
    from interaction_basis.models.modadd import build_modadd_sections

    builds = {}

    def build(seed: int) -> dict:
        if seed in builds:
            return builds[seed]
        weights = dict(np.load(reference_dir / f"modadd_seed{seed}" / "weights.npz"))
        split = np.load(reference_dir / "modadd_train_split.npz")["train_index"]
        train = torch.as_tensor(split)
        model = build_modadd_sections(weights)
        tokens, labels = build_modadd_dataset()
        acts, stats, methods = build_in_memory(
            model, tokens[train], ("lib", "pca"), truncation=Truncation(1e-15, relative=False)
        )
        builds[seed] = dict(
            seed=seed, weights=weights, model=model, tokens=tokens, labels=labels, train=train,
            test=compute_modadd_split(len(labels), 0.3, 0)[1], acts=acts, stats=stats, **methods,
        )  # fmt: skip
        return builds[seed]

    return build
