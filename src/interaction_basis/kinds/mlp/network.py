"""The image MLP's weights (``layers.{i}.W/b``) as a sectioned model."""

from collections.abc import Mapping

from interaction_basis.config import ModelConfig
from interaction_basis.models.mlp import build_mlp_sections, validate_mlp_weights
from interaction_basis.models.sectioned import SectionedModel


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    validate_mlp_weights(weights, source=source)


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    n_linear = len(validate_mlp_weights(weights)[1]) + 1
    return [f"layers.{i}" for i in range(n_linear)] + ["output"]


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_mlp_sections(weights, node_layers, dtype, activation=cfg.mlp.activation)
