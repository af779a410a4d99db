"""extract.store_activations false: only the statistics are stored, and the basis and edge
stages recompute the activations from the model and the token chunks. On the tiny GPT-2 the
bases, M' and edges are bit-equal to those computed from stored activations (the same
operations on the same batches, on one device), unsharded and per shard."""

import numpy as np
import pytest
import torch

from interaction_basis import storage
from interaction_basis.config import BasisSettings, EdgesConfig, ExtractConfig, ModelConfig
from interaction_basis.kinds import network
from interaction_basis.stages import basis as basis_stages
from interaction_basis.stages import edges as edge_stages
from interaction_basis.stages import extract as extract_stages
from lm_fixtures import randomise_lm, write_corpus, write_tiny_gpt2

N_CTX, N_FIT, N_STATS, BATCH = 8, 10, 16, 4  # a last batch of 2: uneven batches too
LAYERS = ["ln1.0", "ln1_out.0", "attn_in.0", "ln2.0", "mlp_in.0", "ln_final", "unembed"]
BASIS = BasisSettings(rotate_final=True, sources={"n_pos": 2})  # stochastic: seeds per batch
EDGES = EdgesConfig(n_sources_pos=2)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_store")
    model_dir = write_tiny_gpt2(root / "model", write_corpus(root / "corpus.txt"))
    hf = network.get("hf").load_weights(_cfg(model_dir), str(model_dir))
    randomise_lm(hf, 0).save_pretrained(model_dir)  # nonzero biases and LayerNorm affines
    rng = np.random.default_rng(0)
    vocab = hf.config.vocab_size
    chunks = {
        name: rng.integers(0, vocab, size=(n, N_CTX + 1))
        for name, n in [("fit", N_FIT), ("eval", 2), ("stats", N_STATS)]
    }
    storage.write_token_chunks(root / "tokens.zarr", chunks, {})
    return root, model_dir


def _cfg(model_dir) -> ModelConfig:
    return ModelConfig.model_validate(
        {"kind": "hf", "hub": {"source": str(model_dir)}, "text": {"n_ctx": N_CTX}}
    )


def _extract_cfg(store: bool, n_shards: int = 1) -> ExtractConfig:
    return ExtractConfig(
        node_layers=LAYERS, batch_size=BATCH, n_shards=n_shards, store_activations=store
    )


def _run(lm, name: str, store: bool):
    """Extraction, the LIB and PCA bases and LIB's edges, unsharded."""
    root, model_dir = lm
    out, tokens, weights = root / name, str(root / "tokens.zarr"), str(model_dir)
    out.mkdir()
    model, extract = _cfg(model_dir), _extract_cfg(store)
    acts = str(out / "activations.zarr")
    extract_stages.extract_activations(model, extract, weights, acts, tokens)
    for method in ("lib", "pca"):
        basis = str(out / f"{method}.zarr")
        basis_stages.fit_basis(model, extract, BASIS, method, weights, acts, basis, tokens)
    edges = str(out / "edges.zarr")
    edge_stages.compute_edges(
        model, extract, EDGES, weights, acts, str(out / "lib.zarr"), edges, tokens
    )
    return out


def _assert_same_bases(a, b):
    bases_a, bases_b = storage.read_bases(a), storage.read_bases(b)
    assert list(bases_a) == list(bases_b) == LAYERS
    for layer in LAYERS:
        for x, y in zip(bases_a[layer], bases_b[layer], strict=True):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), layer
            else:
                assert x == y, layer


def test_without_stored_activations_bases_and_edges_are_bit_equal(lm):
    stored, recomputed = _run(lm, "stored", True), _run(lm, "recomputed", False)
    assert storage.has_activations(stored / "activations.zarr")
    assert not storage.has_activations(recomputed / "activations.zarr")
    assert storage.read_node_layers(recomputed / "activations.zarr") == LAYERS
    # the statistics are stored either way, and equal
    for layer, s in storage.read_stats(stored / "activations.zarr").items():
        r = storage.read_stats(recomputed / "activations.zarr")[layer]
        assert torch.equal(s.gram, r.gram) and torch.equal(s.mean, r.mean), layer
    for method in ("lib", "pca"):
        _assert_same_bases(stored / f"{method}.zarr", recomputed / f"{method}.zarr")
    lib_s = storage.read_m_dash(stored / "lib.zarr")
    lib_r = storage.read_m_dash(recomputed / "lib.zarr")
    assert lib_s.keys() == lib_r.keys() and len(lib_s) == len(LAYERS) - 1
    assert all(torch.equal(lib_s[k], lib_r[k]) for k in lib_s)
    edges_s = storage.read_edges(stored / "edges.zarr")
    edges_r = storage.read_edges(recomputed / "edges.zarr")
    assert edges_s.keys() == edges_r.keys()
    assert all(torch.equal(edges_s[k], edges_r[k]) for k in edges_s)


def test_shards_recompute_their_own_samples(lm):
    """A shard's M' and edge sums, recomputed, equal those from its stored activations: the
    shard's samples and batch numbers (the stochastic sources' seeds) come from its store."""
    root, model_dir = lm
    model, tokens, weights = _cfg(model_dir), str(root / "tokens.zarr"), str(model_dir)
    basis = str(root / "shard_basis.zarr")
    basis_stages.fit_basis(
        model,
        _extract_cfg(True),
        BASIS,
        "lib",
        weights,
        str(_extract_whole(lm)),
        basis,
        tokens,
    )
    layer, nxt = "attn_in.0", "ln2.0"
    parts = {}
    for store in (True, False):
        extract = _extract_cfg(store, n_shards=2)
        acts = str(root / f"shard1_{store}.zarr")
        extract_stages.extract_shard(model, extract, weights, acts, 1, tokens)
        m_dash = str(root / f"m_dash_{store}.zarr")
        basis_stages.shard_m_dash(
            model, extract, BASIS, layer, weights, acts, basis, m_dash, tokens
        )
        edges = str(root / f"edges_{store}.zarr")
        edge_stages.shard_edges(model, extract, EDGES, weights, acts, basis, edges, tokens)
        parts[store] = (
            storage.read_partial_sums(m_dash)[layer],
            storage.read_partial_sums(edges)[storage.edge_group_name(layer, nxt)],
        )
    for stored, recomputed in zip(parts[True], parts[False], strict=True):
        assert stored.count == recomputed.count > 0
        assert torch.equal(stored.total.value(), recomputed.total.value())


def _extract_whole(lm):
    root, model_dir = lm
    acts = root / "whole.zarr"
    if not acts.exists():
        extract_stages.extract_activations(
            _cfg(model_dir),
            _extract_cfg(True),
            str(model_dir),
            str(acts),
            str(root / "tokens.zarr"),
        )
    return acts
