"""Kind ``modadd``: the paper's one-layer modular-addition transformer (lib_spec B.1)."""

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from interaction_basis.config import ModelConfig
from interaction_basis.data.modadd import build_modadd_dataset, compute_modadd_split
from interaction_basis.interpret.fourier import compute_cluster_labels, compute_frequency_power
from interaction_basis.kinds import HeldOut, TaskData, TrainedModel
from interaction_basis.kinds._classifier import classifier_accuracies
from interaction_basis.lib.records import Basis
from interaction_basis.models.modadd import (
    MODADD_NODE_LAYERS,
    build_modadd_sections,
    validate_modadd_weights,
)
from interaction_basis.models.sectioned import SectionedModel

if TYPE_CHECKING:
    from interaction_basis.graph.clustering import Modules

USES_GPU = False
TEXT = False


def load_weights(cfg: ModelConfig, path: str) -> dict[str, np.ndarray]:
    from interaction_basis import storage

    return storage.read_weights(path)


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    validate_modadd_weights(weights, source=source)


def load_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
    t = cfg.train
    tokens, labels = build_modadd_dataset(t.modulus)
    train, test = compute_modadd_split(len(labels), t.frac_train, t.data_seed)
    return TaskData(
        tokens[train],
        tokens[train],
        labels[train],
        tokens[test],
        labels[test],
        f"modular addition mod {t.modulus}, train split",
    )


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    return list(MODADD_NODE_LAYERS)


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_modadd_sections(weights, node_layers, dtype)


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    from interaction_basis.training.modadd import train_modadd

    r = train_modadd(cfg.train, num_threads=threads)
    return TrainedModel(r.weights, r.history, r.train_accuracy, r.test_accuracy)


def accuracies(cfg: ModelConfig, weights, data: TaskData) -> dict[str, float]:
    model = build_model(cfg, weights, default_node_layers(cfg, weights), torch.float32, None)
    return classifier_accuracies(model, data)


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    p = cfg.train.modulus
    inputs = load_data(cfg).test_inputs[:max_samples]
    return HeldOut(inputs, f"modular addition mod {p}, test split", [*map(str, range(p)), "="])


def label_modules(cfg: ModelConfig, network, modules) -> list[dict]:
    model, bases = network()
    labels = label_modadd_clusters(model, bases, modules, cfg.train.modulus)
    return [{"frequency": label} for label in labels]


def label_modadd_clusters(
    model: SectionedModel, bases: Mapping[str, Basis], modules: "Modules", modulus: int
) -> list[dict]:
    """Each module's dominant Fourier frequency over all ``p²`` inputs (lib_spec C.1.4)."""
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


def tokenizer(cfg: ModelConfig, weights_path: str) -> None:
    return None


def thumbnails(cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
    return {}


def planted_blocks(cfg: ModelConfig, weights, layers: list[str]) -> None:
    return None
