"""The planted-module MLP's weights as a sectioned model."""

from collections.abc import Mapping

from interaction_basis.config import ModelConfig
from interaction_basis.models.mlp import mlp_node_layers
from interaction_basis.models.modular_mlp import (
    build_modular_mlp_sections,
    validate_modular_mlp_weights,
)
from interaction_basis.models.sectioned import SectionedModel


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    validate_modular_mlp_weights(weights, source=source)


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    return list(mlp_node_layers(cfg.modular_mlp.n_hidden_layers + 1))


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_modular_mlp_sections(weights, node_layers, dtype, cfg.modular_mlp.activation_fn)
