"""A downloaded causal LM, loaded in float64 and re-implemented as a sectioned model."""

from collections.abc import Mapping

import torch

from interaction_basis.config import ModelConfig
from interaction_basis.models.hf import build_hf_sections, hf_node_layers, load_hf_model
from interaction_basis.models.sectioned import SectionedModel


def load_weights(cfg: ModelConfig, path: str):
    """The model loaded (float64) from its downloaded folder."""
    return load_hf_model(path, torch.float64)


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    raise ValueError(
        "kind 'hf' takes its model from model.hub (rule download_model), not a weights.npz: "
        "set model.weights to null."
    )


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    return hf_node_layers(weights, "ln", final="unembed")


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_hf_sections(
        weights.to(device), node_layers, dtype, fold_value_biases=cfg.hub.fold_value_biases
    )
