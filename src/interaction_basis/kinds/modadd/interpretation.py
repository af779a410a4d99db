"""Fourier labels of mod-add modules and features, over all ``p²`` inputs (method §C.1.4)."""

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from interaction_basis.config import ModelConfig
from interaction_basis.data.modadd import build_modadd_dataset
from interaction_basis.interpret.fourier import compute_cluster_labels, compute_frequency_power
from interaction_basis.lib.records import Basis
from interaction_basis.models.sectioned import SectionedModel

if TYPE_CHECKING:
    from interaction_basis.graph.clustering import Modules


def label_modules(cfg: ModelConfig, network, modules) -> list[dict]:
    model, bases = network()
    labels = label_modadd_clusters(model, bases, modules, cfg.train.modulus)
    return [{"frequency": label} for label in labels]


def label_modadd_clusters(
    model: SectionedModel, bases: Mapping[str, Basis], modules: "Modules", modulus: int
) -> list[dict]:
    """Each module's dominant Fourier frequency over all ``p²`` inputs (method §C.1.4)."""
    acts = _all_activations(model, modulus)
    powers = {}
    for layer in modules.layers:
        feats = (acts[layer] @ bases[layer].C.to(acts[layer].dtype)).sum(dim=1)  # sum positions
        powers[layer] = compute_frequency_power(feats.to(torch.float64).numpy(), modulus=modulus)
    labels = compute_cluster_labels(modules.cluster_features, powers)
    return [
        {
            "frequency": int(lab.frequency),
            "share": float(lab.share),
            "n_labelled": int(lab.n_features),
        }
        for lab in labels
    ]


def add_feature_evidence(cfg: ModelConfig, model, bases, evidence, inputs: Tensor) -> None:
    """Each feature's Fourier spectrum over all inputs, and its examples' operands."""
    from interaction_basis.interpret.features import compute_fourier_evidence

    modulus = cfg.train.modulus
    acts = _all_activations(model, modulus)
    for layer, fourier in compute_fourier_evidence(acts, bases, modulus).items():
        v = evidence[layer]
        v |= fourier
        for name in ("top", "bottom"):
            sample = v[f"{name}_sample"][1]
            v[f"{name}_a"] = (("rank", "feature"), inputs[sample, 0].numpy())
            v[f"{name}_b"] = (("rank", "feature"), inputs[sample, 1].numpy())


def _all_activations(model, modulus: int) -> dict[str, Tensor]:
    tokens, _ = build_modadd_dataset(modulus)
    with torch.no_grad():
        return model.activations(tokens.to(torch.long))
