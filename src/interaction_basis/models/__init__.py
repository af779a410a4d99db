"""Models: the only package code that builds or runs networks."""

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from interaction_basis.models.mlp import build_mlp_sections
from interaction_basis.models.modadd import build_modadd_sections
from interaction_basis.models.sectioned import SectionedModel

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def load_sectioned_model(
    kind: str,
    weights: Mapping[str, np.ndarray],
    node_layers: Sequence[str],
    dtype: str,
    activation: str = "relu",
) -> SectionedModel:
    """The bias-folded sectioned model of a configured architecture."""
    if kind == "modadd":
        return build_modadd_sections(weights, node_layers, DTYPES[dtype])
    if kind == "mlp":
        return build_mlp_sections(weights, node_layers, DTYPES[dtype], activation=activation)
    raise ValueError(f"Unknown model kind {kind!r}; supported: modadd, mlp.")
