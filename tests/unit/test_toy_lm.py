"""The toy induction LM: its saved folder and corpus go through the hub/local-source path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from interaction_basis import storage
from interaction_basis.config import (
    InductionCorpusConfig,
    ToyGPT2Config,
    ToyLMConfig,
    ToyLMTrainConfig,
)
from interaction_basis.data.hub import download_dataset, download_model
from interaction_basis.data.induction_corpus import make_induction_corpus
from interaction_basis.data.text import load_held_out_texts, load_texts, load_tokenizer
from interaction_basis.interpret.heads import head_roles, head_scores
from interaction_basis.models.hf import load_hf_model
from interaction_basis.models.toy_gpt2 import build_toy_gpt2
from interaction_basis.stages.toy_lm import train_toy_lm
from interaction_basis.training.toy_lm import (
    encode_documents,
    repeat_accuracy,
    train_word_tokenizer,
)

REPO = Path(__file__).resolve().parents[2]
CORPUS = InductionCorpusConfig(
    n_words=16, n_documents=40, n_held_out=5, length=12, span_max=6, span_min=3
)


def test_saved_folder_and_corpus_load_through_the_local_source_path(tmp_path):
    corpus = make_induction_corpus(CORPUS)
    texts = corpus.texts()
    tok = train_word_tokenizer(texts, CORPUS.n_words)
    torch.manual_seed(0)
    model = build_toy_gpt2(
        ToyGPT2Config(d_model=16, d_mlp=32, n_head=2, n_ctx=16), len(tok), tok.eos_token_id
    ).eval()
    storage.write_pretrained(tmp_path / "toy", model, tok)
    storage.write_text(tmp_path / "corpus.txt", "\n\n".join(texts) + "\n")

    download_model(str(tmp_path / "toy"), None, tmp_path / "resources" / "model")
    download_dataset(str(tmp_path / "corpus.txt"), None, tmp_path / "resources" / "data")
    loaded = load_hf_model(tmp_path / "resources" / "model", dtype=torch.float32)
    loaded_tok = load_tokenizer(tmp_path / "resources" / "model")

    ids = encode_documents(corpus, loaded_tok)  # one token per word, the same ids
    np.testing.assert_array_equal(ids, encode_documents(corpus, tok))
    x = torch.from_numpy(ids[:4])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0
        )
    assert loaded_tok.decode(ids[0].tolist()) == texts[0]
    data = tmp_path / "resources" / "data"
    assert list(load_texts(data, txt_separator="")) == texts
    held = load_held_out_texts(
        data, n_documents=CORPUS.n_held_out, n_fit_documents=CORPUS.n_documents, txt_separator=""
    )
    assert held == texts[CORPUS.n_documents :]


def _scores_of_guesses(guess, ids, mask) -> dict[str, float]:
    """repeat_accuracy of a model that predicts ``guess`` (document, word) after EOS + ids."""

    class Oracle(torch.nn.Module):
        def forward(self, input_ids):
            assert (input_ids[:, 1:] == ids[:, :-1]).all()  # inputs: EOS, then the words
            logits = torch.nn.functional.one_hot(guess, CORPUS.n_words + 1).double()
            return type("Out", (), {"logits": logits})

    return repeat_accuracy(Oracle(), ids, mask, eos_id=CORPUS.n_words)


def test_repeat_accuracy_counts_only_the_masked_words():
    """An oracle that is right exactly on the mask scores 1 there and 0 elsewhere."""
    corpus = make_induction_corpus(CORPUS)
    ids, mask = torch.from_numpy(corpus.ids), torch.from_numpy(corpus.repeat)
    scores = _scores_of_guesses(torch.where(mask, ids, (ids + 1) % CORPUS.n_words), ids, mask)
    assert scores["repeat_accuracy"] == 1.0 and scores["other_accuracy"] == 0.0
    assert scores["first_word_accuracy"] == 1.0


def test_first_word_accuracy_scores_the_first_predictable_word_of_each_copy():
    """Wrong on exactly the first predictable word of every copy: 0 there, and the repeat
    accuracy loses one word per document."""
    corpus = make_induction_corpus(CORPUS)
    ids, mask = torch.from_numpy(corpus.ids), torch.from_numpy(corpus.repeat)
    starts = mask.int().argmax(dim=1)
    first = torch.zeros_like(mask)
    first[torch.arange(len(mask)), starts] = True
    scores = _scores_of_guesses(torch.where(first, (ids + 1) % CORPUS.n_words, ids), ids, mask)
    assert scores["first_word_accuracy"] == 0.0
    assert scores["repeat_accuracy"] == pytest.approx(1 - len(mask) / mask.sum().item())


@pytest.mark.slow
def test_the_configured_toy_lm_learns_induction(tmp_path):
    """config/induction_lm.yaml's toy LM reaches its target on held-out repeats (minutes), and
    the saved folder reproduces that accuracy when reloaded through the local-source path."""
    torch.set_num_threads(1)
    raw = yaml.safe_load((REPO / "config" / "induction_lm.yaml").read_text())
    cfg = ToyLMConfig.model_validate(raw["toy_lms"][0])
    paths = (tmp_path / "model", tmp_path / "corpus.txt", tmp_path / "m.json")
    train_toy_lm(cfg, *map(str, paths))
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["repeat_accuracy"] >= cfg.train.target_accuracy >= 0.9
    # Outside the copies only the skip rule's words are predictable (at most its share).
    assert metrics["other_accuracy"] < cfg.corpus.skip_probability + 0.05

    model = load_hf_model(tmp_path / "model", dtype=torch.float32)
    tok = load_tokenizer(tmp_path / "model")
    corpus = make_induction_corpus(cfg.corpus)
    held = slice(cfg.corpus.n_documents, None)
    ids = torch.from_numpy(encode_documents(corpus, tok)[held])
    again = repeat_accuracy(model, ids, torch.from_numpy(corpus.repeat[held]), tok.eos_token_id)
    assert again["repeat_accuracy"] == pytest.approx(metrics["repeat_accuracy"], abs=1e-9)

    # The accuracy comes from the circuit: a previous-token head in layer 0 and an induction
    # head in layer 1, scored on the held-out documents as heads.md scores them.
    model.set_attn_implementation("eager")
    inputs = torch.cat([torch.full_like(ids[:, :1], tok.eos_token_id), ids[:, :-1]], dim=1)
    with torch.no_grad():
        patterns = model(input_ids=inputs, output_attentions=True).attentions
    roles = head_roles(head_scores(patterns, inputs))
    assert any(h.startswith("L0.") for h in roles["previous_token_heads"]), roles
    assert any(h.startswith("L1.") for h in roles["induction_heads"]), roles


@pytest.mark.parametrize("windows", ["packed", "documents"])
def test_training_windows(windows, monkeypatch):
    """documents: every window is EOS and one whole training document; packed: n_ctx tokens
    from anywhere in the packed stream."""
    import interaction_basis.training.toy_lm as train_lm

    seen = []
    build = train_lm.build_toy_gpt2

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["input_ids"].clone()) if m.training else None,
            with_kwargs=True,
        )
        return model

    monkeypatch.setattr(train_lm, "build_toy_gpt2", recording)
    cfg = ToyLMConfig(
        name="t",
        corpus=CORPUS,
        model=ToyGPT2Config(d_model=16, d_mlp=32, n_head=2, n_ctx=16),
        train=ToyLMTrainConfig(max_steps=4, eval_every=4, target_accuracy=1e-9, windows=windows),
    )
    toy = train_lm.train_toy_lm(cfg)
    eos = toy.tokenizer.eos_token_id
    windows_seen = torch.cat(seen)
    assert len(seen) == 4
    if windows == "documents":
        docs = torch.from_numpy(encode_documents(make_induction_corpus(CORPUS), toy.tokenizer))
        assert windows_seen.shape[1] == CORPUS.length + 1
        assert (windows_seen[:, 0] == eos).all()
        for row in windows_seen[:, 1:]:  # a training document, never a held-out one
            assert (docs[: CORPUS.n_documents] == row).all(1).any()
    else:
        assert windows_seen.shape[1] == 16 and (windows_seen[:, 0] != eos).any()
