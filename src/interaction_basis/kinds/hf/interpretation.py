"""The tokenizer that names the token ids of the feature windows."""

from interaction_basis.config import ModelConfig


def tokenizer(cfg: ModelConfig, weights_path: str):
    from interaction_basis.data.text import load_tokenizer

    return load_tokenizer(weights_path)
