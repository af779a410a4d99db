"""Block vectors (no labels, no held-out split)."""

import torch

from interaction_basis.config import ModelConfig
from interaction_basis.data.block_vectors import generate_block_vectors
from interaction_basis.kinds.data import HeldOut, TaskData


def load_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
    x = generate_block_vectors(cfg.block_vector)
    no_labels = torch.empty(0, dtype=torch.long)
    b = cfg.block_vector
    return TaskData(x, x, no_labels, x, no_labels, f"{b.size} block vectors of length {b.length}")


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    raise ValueError(
        "model.kind 'modular_mlp' has no held-out split: set interpret.enabled to false."
    )
