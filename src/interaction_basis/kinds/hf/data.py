"""Token chunks of the tokenized text dataset (rule tokenize_dataset)."""

import torch
from torch import Tensor

from interaction_basis.config import ModelConfig
from interaction_basis.kinds.data import HeldOut, TaskData


class LazyInputs:
    """Language-model inputs read a slice at a time (``inputs[a:b]``: a tensor), so that a large
    set of statistics chunks never sits in memory whole."""

    def __init__(self, rows):
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, rows: slice) -> Tensor:
        return torch.from_numpy(self._rows[rows][:, :-1])


def load_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
    if tokens_path is None:
        raise ValueError("kind 'hf' needs the tokenized dataset (rule tokenize_dataset).")
    from interaction_basis import storage

    chunks = storage.read_token_chunks(tokens_path)
    fit, held_out = (torch.from_numpy(chunks[name][:]) for name in ("fit", "eval"))
    return TaskData(
        fit[:, :-1],
        fit[:, :-1],
        fit[:, 1:],
        held_out[:, :-1],
        held_out[:, 1:],
        f"{cfg.text.source} ({len(fit)} chunks of {cfg.text.n_ctx} tokens)",
        LazyInputs(chunks["stats"]) if "stats" in chunks else None,
    )


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    inputs = load_data(cfg, tokens_path).test_inputs[:max_samples]
    return HeldOut(inputs, "held-out token chunks", None)
