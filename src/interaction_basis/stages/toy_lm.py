"""Stage 0: toy language models with a known circuit, trained here and saved like hub models
(experiments read them through download_model/download_dataset as local sources)."""

import logging

from interaction_basis import storage
from interaction_basis.config import ToyLMConfig
from interaction_basis.training.toy_lm import train_toy_lm as train

log = logging.getLogger(__name__)


def train_toy_lm(settings: ToyLMConfig, model: str, corpus: str, metrics: str) -> None:
    """Train, then save the model folder (with its tokenizer), the corpus and the metrics."""
    toy = train(settings)
    m = toy.metrics
    log.info(
        "repeat accuracy %.4f after %d steps (%.0f s)",
        m["repeat_accuracy"],
        m["steps"],
        m["train_seconds"],
    )
    storage.write_pretrained(model, toy.model, toy.tokenizer)
    storage.write_text(corpus, toy.text)
    storage.write_json(metrics, m)
