"""Models: the only package code that builds or runs networks."""

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from interaction_basis.models.mlp import build_mlp_sections
from interaction_basis.models.modadd import build_modadd_sections
from interaction_basis.models.sectioned import SectionedModel

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str, kind: str) -> torch.device:
    """``extract.device`` as a torch device: ``auto`` is CUDA for language models when torch
    sees a GPU; the toy models (mod-add, MLP) are too small to gain from one and use the CPU."""
    cpu = torch.device("cpu")
    if name == "cpu":
        return cpu
    if kind != "hf":
        if name == "auto":
            return cpu
        raise ValueError(
            f"extract.device {name!r} is for language models (model.kind hf); {kind} models "
            "run on the CPU: set extract.device to auto or cpu."
        )
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "auto":
        return cpu
    raise ValueError(
        f"extract.device is {name!r} but torch sees no CUDA device (torch {torch.__version__}, "
        f"CUDA build: {torch.version.cuda}); set extract.device to auto or cpu, or install a "
        "CUDA build of torch on the GPU nodes."
    )


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
    if kind == "modular_mlp":
        from interaction_basis.models.modular_mlp import build_modular_mlp_sections

        return build_modular_mlp_sections(weights, node_layers, DTYPES[dtype], activation)
    raise ValueError(f"Unknown model kind {kind!r}; supported: modadd, mlp, modular_mlp.")
