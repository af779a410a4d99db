"""Token chunks of a language model's text dataset, for fitting, statistics and evaluation."""

import logging

from interaction_basis import storage
from interaction_basis.config import ModelConfig
from interaction_basis.data import text
from interaction_basis.stages.common import provenance

log = logging.getLogger(__name__)


def tokenize_dataset(model: ModelConfig, model_dir: str, dataset: str, out: str) -> None:
    """Chunks of n_ctx + 1 tokens for fitting, maybe more for the statistics, and (from the
    last documents) for evaluation."""
    t = model.text
    tokenizer = text.load_tokenizer(model_dir)
    kw: dict = dict(split=t.split, text_column=t.text_column, txt_separator=t.txt_separator)
    texts = text.load_texts(dataset, max_documents=t.max_documents, **kw)
    stream = text.tokenize_texts(texts, tokenizer)
    chunks = {"fit": text.pack_token_chunks(stream, t.n_ctx, t.n_samples, seed=t.seed)}
    if t.n_stats_samples is not None:
        chunks["stats"] = text.pack_token_chunks(stream, t.n_ctx, t.n_stats_samples, seed=t.seed)
    held_out = text.load_held_out_texts(
        dataset, n_documents=t.n_eval_documents, n_fit_documents=t.max_documents, **kw
    )
    chunks["eval"] = text.tokenize_to_chunks(
        held_out, tokenizer, t.n_ctx, t.n_eval_samples, seed=t.seed
    )
    log.info("token chunks: %s", {name: c.shape for name, c in chunks.items()})
    attrs = provenance(model=model.settings("hub", "text"))
    storage.write_token_chunks(out, chunks, attrs)
