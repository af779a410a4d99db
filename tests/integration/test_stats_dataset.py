"""Means and Grams from their own (larger) set of chunks, as the paper does for GPT-2, in one
job and in shards (extract_activations -> gather_stats)."""

import numpy as np
import pytest
import torch

from interaction_basis import storage
from interaction_basis.config import ExtractConfig, ModelConfig
from interaction_basis.kinds import network
from interaction_basis.lib.fit import batches_from_tensors
from interaction_basis.lib.statistics import compute_layer_statistics, shard_range
from interaction_basis.models.sectioned import SectionedModel
from interaction_basis.stages import extract as stages
from lm_fixtures import write_corpus, write_tiny_gpt2

N_CTX, N_FIT, N_STATS, BATCH = 8, 12, 40, 4
LAYERS = ["ln1.0", "ln2.0", "ln_final", "unembed"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats_dataset")
    model_dir = write_tiny_gpt2(root / "model", write_corpus(root / "corpus.txt"))
    rng = np.random.default_rng(0)
    vocab = network.get("hf").load_weights(_cfg(model_dir), str(model_dir)).config.vocab_size
    chunks = {
        name: rng.integers(0, vocab, size=(n, N_CTX + 1))
        for name, n in [("fit", N_FIT), ("eval", 2), ("stats", N_STATS)]
    }
    storage.write_token_chunks(root / "tokens.zarr", chunks, {})
    return root, model_dir, chunks


def _cfg(model_dir) -> ModelConfig:
    return ModelConfig.model_validate(
        {"kind": "hf", "hub": {"source": str(model_dir)}, "text": {"n_ctx": N_CTX}}
    )


def _extract(lm, out, n_shards=1, shard=None):
    root, model_dir, _ = lm
    extract = ExtractConfig(node_layers=LAYERS, batch_size=BATCH, n_shards=n_shards)
    stages.extract_activations(
        _cfg(model_dir), extract, str(model_dir), str(out), str(root / "tokens.zarr"), shard
    )
    return out


def test_statistics_come_from_the_stats_chunks(lm):
    root, model_dir, chunks = lm
    out = _extract(lm, root / "activations.zarr")
    stored = storage.read_activations(out, "ln2.0")
    assert stored.shape[:2] == (N_FIT, N_CTX)  # the bases and edges still see the fit chunks
    model = network.load_model(_cfg(model_dir), str(model_dir), LAYERS, "float64")
    with torch.no_grad():
        inputs = torch.from_numpy(chunks["stats"][:, :-1])
        acts = [model.activations(inputs[i : i + BATCH]) for i in range(0, N_STATS, BATCH)]
    expected_acts = {layer: torch.cat([a[layer] for a in acts]) for layer in LAYERS}
    stats = storage.read_stats(out)
    for layer in LAYERS:
        traits = model.traits(layer)
        expected = compute_layer_statistics(
            batches_from_tensors(expected_acts, BATCH), layer, traits
        )
        assert stats[layer].count == N_STATS * N_CTX
        assert torch.equal(stats[layer].gram, expected.gram), layer
        assert torch.equal(stats[layer].mean, expected.mean), layer
        fit_only = compute_layer_statistics(
            batches_from_tensors({layer: storage.read_activations(out, layer)}, BATCH),
            layer,
            traits,
        )
        assert not torch.allclose(fit_only.gram, expected.gram), layer


def test_sharded_statistics_from_the_stats_chunks_are_identical(lm):
    root = lm[0]
    plain = storage.read_stats(_extract(lm, root / "plain.zarr"))
    shards = [_extract(lm, root / f"shard{i}.zarr", n_shards=3, shard=i) for i in range(3)]
    assert sum(storage.read_activations(s, "ln1.0").shape[0] for s in shards) == N_FIT
    stages.gather_stats([str(s) for s in shards], str(root / "stats.zarr"))
    gathered = storage.read_stats(root / "stats.zarr")
    for layer in LAYERS:
        assert gathered[layer].count == plain[layer].count == N_STATS * N_CTX
        assert torch.equal(gathered[layer].gram, plain[layer].gram), layer
        assert torch.equal(gathered[layer].mean, plain[layer].mean), layer


def test_every_batch_runs_through_the_model_once(lm, monkeypatch):
    """The batch that fixes the centring shift is the run's first statistics batch: one job
    reuses its activations; a later shard runs it once more, for the shift alone."""
    calls = []
    original = SectionedModel.activations

    def counting(self, inputs):
        calls.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(SectionedModel, "activations", counting)
    root = lm[0]
    _extract(lm, root / "counted.zarr")
    assert len(calls) == N_FIT // BATCH + N_STATS // BATCH
    calls.clear()
    _extract(lm, root / "counted_shard.zarr", n_shards=3, shard=1)
    fit, stats = (shard_range(n, BATCH, 3, 1) for n in (N_FIT, N_STATS))
    assert len(calls) == 1 + (fit[1] - fit[0]) // BATCH + (stats[1] - stats[0]) // BATCH
