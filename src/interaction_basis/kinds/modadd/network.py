"""The mod-add transformer's weights (TransformerLens naming) as a sectioned model."""

from collections.abc import Mapping

from interaction_basis.config import ModelConfig
from interaction_basis.models.modadd import (
    MODADD_NODE_LAYERS,
    build_modadd_sections,
    validate_modadd_weights,
)
from interaction_basis.models.sectioned import SectionedModel


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    validate_modadd_weights(weights, source=source)


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    return list(MODADD_NODE_LAYERS)


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_modadd_sections(weights, node_layers, dtype)
