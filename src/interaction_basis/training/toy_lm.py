"""A toy language model trained here on a corpus built for induction: ground truth for LMs.

:func:`train_toy_lm` generates the induction corpus (:mod:`induction_corpus`), trains a
word-level tokenizer on it with ``tokenizers``, and trains a small GPT-2
(:mod:`models.toy_gpt2`) on random ``n_ctx``-token windows of the tokenised training documents
(EOS after each, as ``data.text.tokenize_texts`` packs them), or on whole documents each after
an EOS (``train.windows: documents``: no copy is cut from its source), until its accuracy on the
predictable words of the repeated spans of the held-out documents reaches
``target_accuracy``. The model and tokenizer are saved with ``save_pretrained`` and the corpus
as a ``.txt`` file, so that an experiment reads them through the same local-source path as a
hub model and dataset (``model.hub.source``, ``model.text.source``).

Everything is seeded (corpus, initialisation, windows); the result still depends on the BLAS
path and thread count in the last bits, like any float32 training.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from interaction_basis.config import ToyLMConfig
from interaction_basis.data.induction_corpus import InductionCorpus, make_induction_corpus
from interaction_basis.models.toy_gpt2 import build_toy_gpt2
from interaction_basis.progress import progress

if TYPE_CHECKING:  # transformers is slow to import, and config.py imports this module
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
UNK = "<|unk|>"


@dataclass(frozen=True)
class ToyLM:
    """A trained toy LM, its tokenizer, its corpus's text and how training went."""

    model: "GPT2LMHeadModel"
    tokenizer: "PreTrainedTokenizerFast"
    text: str
    metrics: dict


def train_word_tokenizer(texts: list[str], n_words: int) -> "PreTrainedTokenizerFast":
    """A word-level tokenizer (one token per whitespace-separated word) with EOS and UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins the words with spaces
    trainer = trainers.WordLevelTrainer(
        vocab_size=n_words + 2, special_tokens=[EOS, UNK], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=UNK, pad_token=EOS
    )


def encode_documents(
    corpus: InductionCorpus, tokenizer: "PreTrainedTokenizerFast"
) -> Int[np.ndarray, "document token"]:
    """Each document's token ids, checked to be one token per word (what the masks assume)."""
    from interaction_basis.data.text import tokenize_texts

    texts = corpus.texts()
    stream = tokenize_texts(texts, tokenizer, append_eos=False)
    n_docs, length = corpus.ids.shape
    if stream.size != n_docs * length:
        raise ValueError(
            f"The tokenizer split {n_docs} documents of {length} words into {stream.size} "
            "tokens, not one token per word."
        )
    ids = stream.reshape(n_docs, length).astype(np.int64)
    vocab = tokenizer.convert_tokens_to_ids(corpus.words)
    if not np.array_equal(ids, np.asarray(vocab)[corpus.ids]):
        raise ValueError("The tokenizer maps some words to the wrong tokens.")
    return ids


def repeat_accuracy(
    model: "GPT2LMHeadModel",
    ids: Int[Tensor, "document word"],
    repeat: Bool[Tensor, "document word"],
    eos_id: int,
) -> dict[str, float]:
    """Next-token accuracy on documents that start after an EOS, as the windows see them.

    Returns:
        ``repeat_accuracy`` on the predictable words of the second copies,
        ``first_word_accuracy`` on the first of them in each document (the word after the
        copy's first word: copying it needs a match of one word, the later ones can also use
        the words before), ``other_accuracy`` on the words outside the copies (chance:
        1/n_words), and the mean ``loss`` over all words.
    """
    inputs = torch.cat([torch.full_like(ids[:, :1], eos_id), ids[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    correct = logits.argmax(-1) == ids
    first = repeat & (repeat.cumsum(dim=1) == 1)
    return {
        "repeat_accuracy": correct[repeat].float().mean().item(),
        "first_word_accuracy": correct[first].float().mean().item(),
        "other_accuracy": correct[~repeat].float().mean().item(),
        "loss": loss.item(),
    }


def window_sampler(
    train_ids: Int[np.ndarray, "document word"], eos: int, n_ctx: int, windows: str
) -> Callable[[int, torch.Generator], Int[Tensor, "batch n_ctx"]]:
    """A function that draws ``batch`` training windows with ``generator``.

    ``documents``: EOS and one whole document each; ``packed``: ``n_ctx`` tokens from anywhere
    in the packed stream, EOS after each document, exactly as ``tokenize_texts`` packs the
    text.
    """
    if windows == "documents":
        documents = torch.from_numpy(
            np.concatenate([np.full((len(train_ids), 1), eos), train_ids], 1)
        )
        return lambda batch, gen: documents[torch.randint(len(documents), (batch,), generator=gen)]
    stream = torch.from_numpy(
        np.concatenate([train_ids, np.full((len(train_ids), 1), eos)], axis=1).ravel()
    )
    n_starts = stream.numel() - n_ctx + 1
    if n_starts < 1:
        raise ValueError(f"The training stream has {stream.numel()} tokens; raise n_documents.")
    offsets = torch.arange(n_ctx)
    return lambda batch, gen: stream[torch.randint(n_starts, (batch, 1), generator=gen) + offsets]


def train_toy_lm(cfg: ToyLMConfig) -> ToyLM:
    """Corpus, tokenizer and model, trained until the held-out repeat accuracy is reached.

    Raises:
        RuntimeError: the target accuracy was not reached within ``max_steps``.
    """
    start = time.perf_counter()
    c, m, t = cfg.corpus, cfg.model, cfg.train
    if c.length + 1 > m.n_ctx:
        raise ValueError(
            f"A document with its EOS ({c.length + 1} tokens) does not fit the model's "
            f"n_ctx={m.n_ctx}: raise model.n_ctx or lower corpus.length."
        )
    corpus = make_induction_corpus(c)
    texts = corpus.texts()
    tokenizer = train_word_tokenizer(texts[: c.n_documents], c.n_words)
    eos = tokenizer.eos_token_id
    ids = encode_documents(corpus, tokenizer)
    train_ids, held_ids = ids[: c.n_documents], torch.from_numpy(ids[c.n_documents :])
    held_repeat = torch.from_numpy(corpus.repeat[c.n_documents :])
    draw_windows = window_sampler(train_ids, eos, m.n_ctx, t.windows)

    torch.manual_seed(t.seed)
    model = build_toy_gpt2(m, len(tokenizer), eos)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    )
    gen = torch.Generator().manual_seed(t.seed)
    history: list[dict] = []
    losses: list[float] = []
    scores = {"repeat_accuracy": math.nan}
    bar = progress(range(1, t.max_steps + 1), "train toy LM", unit="step", mininterval=5)
    for step in bar:
        model.train()
        window = draw_windows(t.batch_size, gen)
        out = model(input_ids=window, labels=window)  # shifted inside
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step % t.eval_every and step != t.max_steps:
            continue
        model.eval()
        scores = repeat_accuracy(model, held_ids, held_repeat, eos)
        history.append({"step": step, "train_loss": float(np.mean(losses)), **scores})
        losses = []
        bar.set_postfix(acc=f"{scores['repeat_accuracy']:.3f}")
        log.info("step %d: %s", step, history[-1])
        if scores["repeat_accuracy"] >= t.target_accuracy:
            break
    else:
        raise RuntimeError(
            f"The toy LM reached a held-out repeat accuracy of {scores['repeat_accuracy']:.3f} "
            f"after max_steps={t.max_steps}, below target_accuracy={t.target_accuracy}. Raise "
            "train.max_steps or lr, or make the task easier (longer spans, fewer words)."
        )
    model.eval()
    metrics = {
        "steps": history[-1]["step"],
        "train_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        **scores,
        "chance_accuracy": 1 / c.n_words,
        "target_accuracy": t.target_accuracy,
        "n_held_out_documents": c.n_held_out,
        "history": history,
    }
    text = "\n\n".join(texts) + "\n"
    return ToyLM(model, tokenizer, text, metrics)
