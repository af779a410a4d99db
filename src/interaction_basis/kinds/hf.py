"""Kind ``hf``: a GPT-2/GPT-Neo/GPT-NeoX causal language model from the Hugging Face hub (or a
local folder), fitted on chunks of a tokenized text dataset (rule tokenize_dataset)."""

from collections.abc import Mapping

import torch
from torch import Tensor

from interaction_basis.config import ModelConfig
from interaction_basis.kinds import HeldOut, TaskData, TrainedModel
from interaction_basis.models.hf import build_hf_sections, hf_node_layers, load_hf_model
from interaction_basis.models.sectioned import SectionedModel

USES_GPU = True
TEXT = True


class LazyInputs:
    """Language-model inputs read a slice at a time (``inputs[a:b]``: a tensor), so that a large
    set of statistics chunks never sits in memory whole."""

    def __init__(self, rows):
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, rows: slice) -> Tensor:
        return torch.from_numpy(self._rows[rows][:, :-1])


def load_weights(cfg: ModelConfig, path: str):
    """The model loaded (float64) from its downloaded folder."""
    return load_hf_model(path, torch.float64)


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    raise ValueError(
        "kind 'hf' takes its model from model.hub (rule download_model), not a weights.npz: "
        "set model.weights to null."
    )


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


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    return hf_node_layers(weights, "ln", final="unembed")


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_hf_sections(
        weights.to(device), node_layers, dtype, fold_value_biases=cfg.hub.fold_value_biases
    )


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    raise ValueError("kind 'hf' is not trained by the workflow: it downloads model.hub.")


def accuracies(cfg: ModelConfig, weights, data: TaskData) -> dict[str, float]:
    return {}


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    inputs = load_data(cfg, tokens_path).test_inputs[:max_samples]
    return HeldOut(inputs, "held-out token chunks", None)


def label_modules(cfg: ModelConfig, network, modules) -> None:
    return None


def add_feature_evidence(cfg: ModelConfig, model, bases, evidence, inputs) -> None:
    pass


def tokenizer(cfg: ModelConfig, weights_path: str):
    from interaction_basis.data.text import load_tokenizer

    return load_tokenizer(weights_path)


def thumbnails(cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
    return {}


def planted_blocks(cfg: ModelConfig, weights, layers: list[str]) -> None:
    return None
