"""Kind ``modular_mlp``: the planted-module MLP of lib_spec H, constructed (not trained) from its
settings and run on block vectors; it has no labels, and its planted blocks are the answer the
features and modules are scored against (rule score_ground_truth)."""

from collections.abc import Mapping

import numpy as np
import torch

from interaction_basis.config import ModelConfig
from interaction_basis.data.block_vectors import generate_block_vectors
from interaction_basis.kinds import HeldOut, PlantedBlocks, TaskData, TrainedModel
from interaction_basis.models.mlp import mlp_node_layers
from interaction_basis.models.modular_mlp import (
    build_modular_mlp_sections,
    build_modular_mlp_weights,
    compute_block_labels,
    mixing_of,
    validate_modular_mlp_weights,
)
from interaction_basis.models.sectioned import SectionedModel

USES_GPU = False
TEXT = False


def load_weights(cfg: ModelConfig, path: str) -> dict[str, np.ndarray]:
    from interaction_basis import storage

    return storage.read_weights(path)


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    validate_modular_mlp_weights(weights, source=source)


def load_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
    x = generate_block_vectors(cfg.block_vector)
    no_labels = torch.empty(0, dtype=torch.long)
    b = cfg.block_vector
    return TaskData(x, x, no_labels, x, no_labels, f"{b.size} block vectors of length {b.length}")


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    return list(mlp_node_layers(cfg.modular_mlp.n_hidden_layers + 1))


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_modular_mlp_sections(weights, node_layers, dtype, cfg.modular_mlp.activation_fn)


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    """Constructed from its settings: no history, no accuracies."""
    nan = float("nan")
    return TrainedModel(build_modular_mlp_weights(cfg.modular_mlp), [], nan, nan)


def accuracies(cfg: ModelConfig, weights, data: TaskData) -> dict[str, float]:
    return {}  # no labels


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    raise ValueError(
        "model.kind 'modular_mlp' has no held-out split: set interpret.enabled to false."
    )


def label_modules(cfg: ModelConfig, network, modules) -> None:
    return None


def add_feature_evidence(cfg: ModelConfig, model, bases, evidence, inputs) -> None:
    pass


def tokenizer(cfg: ModelConfig, weights_path: str) -> None:
    return None


def thumbnails(cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
    return {}


def planted_blocks(cfg: ModelConfig, weights, layers: list[str]) -> PlantedBlocks:
    c = cfg.modular_mlp
    mixings = {layer: mixing_of(weights, layer) for layer in layers}
    return PlantedBlocks(compute_block_labels(c.width, c.first_block), mixings)
