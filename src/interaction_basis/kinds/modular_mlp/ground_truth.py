"""The planted blocks of every coordinate, and each layer's orthogonal mixing (hidden variant)."""

import torch

from interaction_basis.config import ModelConfig
from interaction_basis.kinds.ground_truth import PlantedBlocks
from interaction_basis.kinds.modular_mlp.network import build_model
from interaction_basis.models.modular_mlp import compute_block_labels, mixing_of


def planted_blocks(cfg: ModelConfig, weights, layers: list[str]) -> PlantedBlocks:
    c = cfg.modular_mlp
    mixings = {layer: mixing_of(weights, layer) for layer in layers}
    model = build_model(cfg, weights, layers, torch.float64, None)
    constant = {layer: model.traits(layer).constant for layer in layers}
    return PlantedBlocks(compute_block_labels(c.width, c.first_block), mixings, constant)
