"""Shards add up to the unsharded run: statistics, M' and edges (issue: sharded stages)."""

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from factories import tiny_modadd
from interaction_basis.lib.basis import fix_signs
from interaction_basis.lib.fit import (
    batches_from_tensors,
    compute_edge_sums,
    compute_m_dash,
    fit_bases,
)
from interaction_basis.lib.jacobians import Integration, Sources
from interaction_basis.lib.linalg import compute_shifted_sums
from interaction_basis.lib.records import LayerTraits, add_partials
from interaction_basis.lib.statistics import MomentSums, compute_layer_statistics, shard_range

BATCH = 5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny():
    model, tokens = tiny_modadd()
    with torch.no_grad():
        acts = model.activations(tokens)
    return model, acts


def _shards(acts: dict, n_shards: int):
    """(first batch index, BatchSource) of each shard, as the workflow splits them."""
    n = len(next(iter(acts.values())))
    out = []
    for shard in range(n_shards):
        start, stop = shard_range(n, BATCH, n_shards, shard)
        part = {layer: x[start:stop] for layer, x in acts.items()}
        out.append((start // BATCH, batches_from_tensors(part, BATCH)))
    return out


def _moments(batches, layer, traits, first, center):
    moments = MomentSums.start(first, traits, center)
    for x in batches(layer):
        moments = moments.add(x, layer)
    return moments


@pytest.mark.parametrize("center", [True, False])
def test_shard_moments_add_up_to_the_pooled_statistics_exactly(tiny, center):
    """Compensated sums around the run's first-batch shift: the sharding changes no bit."""
    model, acts = tiny
    full = batches_from_tensors(acts, BATCH)
    for layer in model.node_layers:
        traits = model.traits(layer)
        pooled = compute_layer_statistics(full, layer, traits, center=center)
        first = acts[layer][:BATCH]
        parts = [_moments(s, layer, traits, first, center) for _, s in _shards(acts, 3)]
        merged = parts[2].merge(parts[0]).merge(parts[1])
        combined = merged.finalize(layer)
        assert combined.count == pooled.count
        assert torch.equal(combined.mean, pooled.mean), layer
        assert torch.equal(combined.gram, pooled.gram), layer
        # Plain float64 sums of the same batches, grouped by shard, differ in the last bits.
        per_batch = [compute_shifted_sums(x, merged.shift)[1] for x in full(layer)]
        in_order = sum(per_batch, torch.zeros_like(per_batch[0]))
        groups = [
            (a // BATCH, -(-b // BATCH))
            for a, b in (shard_range(len(acts[layer]), BATCH, 3, i) for i in range(3))
        ]
        by_shard = [sum(per_batch[i:j], torch.zeros_like(per_batch[0])) for i, j in groups]
        assert not torch.equal(by_shard[2] + by_shard[0] + by_shard[1], in_order), layer


def test_moment_sums_around_different_shifts_do_not_merge(tiny):
    model, acts = tiny
    layer = model.node_layers[0]
    a = MomentSums.start(acts[layer][:BATCH], model.traits(layer), True)
    b = MomentSums.start(acts[layer][BATCH : 2 * BATCH], model.traits(layer), True)
    with pytest.raises(ValueError, match="shift from the run's first batch"):
        a.merge(b)


def test_shard_range_tiles_whole_batches():
    for n, n_shards in [(36, 3), (36, 8), (41, 2), (5, 1)]:
        ranges = [shard_range(n, BATCH, n_shards, s) for s in range(n_shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % BATCH == 0 and stop > start for start, stop in ranges)


def test_shard_range_rejects_more_shards_than_batches():
    with pytest.raises(ValueError, match="n_shards=9 must be between 1 and the number of batches"):
        shard_range(36, BATCH, 9, 0)
    with pytest.raises(ValueError, match="shard 3 is not in 0..2"):
        shard_range(36, BATCH, 3, 3)


@pytest.mark.slow
def test_sharded_m_dash_and_edges_with_stochastic_sources(tiny):
    """Sources are drawn per global batch, so shards reproduce the unsharded draws exactly."""
    model, acts = tiny
    full = batches_from_tensors(acts, BATCH)
    stats = {
        layer: compute_layer_statistics(full, layer, model.traits(layer))
        for layer in model.node_layers
    }
    kw = dict(integration=Integration("trapezoidal", 2), sources=Sources(n_hidden=2), seed=3)
    bases, m_dashes = fit_bases(model, full, stats, "lib", **kw)
    shards = _shards(acts, 3)
    for layer in model.node_layers[:-1]:
        nxt = model.node_layers[model.node_layers.index(layer) + 1]
        c_next = None if nxt == model.node_layers[-1] else bases[nxt].C
        parts = [compute_m_dash(model, s, layer, c_next, first_batch=f, **kw) for f, s in shards]
        assert torch.equal(add_partials(parts).mean(), m_dashes[layer]), layer
        # A different seed gives a different estimate: the sources are really random.
        other = compute_m_dash(model, full, layer, c_next, **{**kw, "seed": 4}).mean()
        assert _rel(other, m_dashes[layer]) > 1e-6, layer
    # Edges take sources over positions only; the mod-add model's attention mixes positions.
    kw["sources"] = Sources(n_pos=1)
    full_edges = compute_edge_sums(model, full, bases, **kw)
    shard_edges = [compute_edge_sums(model, s, bases, first_batch=f, **kw) for f, s in shards]
    for pair, whole in full_edges.items():
        summed = add_partials(part[pair] for part in shard_edges)
        assert summed.count == whole.count
        assert torch.equal(summed.mean(), whole.mean()), pair


def test_sign_convention_undoes_a_flipped_feature(tiny):
    model, acts = tiny
    full = batches_from_tensors(acts, BATCH)
    stats = {
        layer: compute_layer_statistics(full, layer, model.traits(layer))
        for layer in model.node_layers
    }
    basis = fit_bases(model, full, stats, "lib")[0]["ln2.0"]
    k = basis.n_masked + 1
    flipped = basis._replace(C=basis.C.clone(), C_pinv=basis.C_pinv.clone())
    flipped.C[:, k] *= -1
    flipped.C_pinv[k] *= -1
    fixed = fix_signs(flipped)
    assert torch.equal(fixed.C, basis.C) and torch.equal(fixed.C_pinv, basis.C_pinv)
    peak = basis.C.abs().argmax(dim=0)
    assert (basis.C[peak, torch.arange(basis.C.shape[1])][basis.n_masked :] > 0).all()


@pytest.mark.parametrize("center", [True, False])
def test_one_pass_statistics_equal_the_two_pass_definition(center):
    """method §A.2 in exact rational arithmetic, with means up to 1e6 times the spread: summing
    around the first batch's shift avoids the cancellation that uncentred sums would suffer."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 5, generator=gen, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 0.0])
    x += torch.tensor([1e6, -3e6, 0.5, 0.0, 1.0])  # the last coordinate: the constant 1
    stats = compute_layer_statistics(
        batches_from_tensors({"l": x}, 7), "l", LayerTraits(constant=True), center=center
    )
    rows = [[Fraction(v) for v in row] for row in x.reshape(-1, 5).tolist()]  # exact arithmetic
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows, strict=True)]
    shift = [*mean[:-1], 0] if center else [0] * 5
    c = [[v - m for v, m in zip(row, shift, strict=True)] for row in rows]
    gram = [[sum(r[i] * r[j] for r in c) / n for j in range(5)] for i in range(5)]
    exact_mean = torch.tensor([float(m) for m in mean], dtype=torch.float64)
    exact_gram = torch.tensor([[float(g) for g in row] for row in gram], dtype=torch.float64)
    assert stats.count == n
    assert torch.allclose(stats.mean, exact_mean, rtol=1e-15, atol=0)
    assert (stats.gram - exact_gram).abs().max() < 1e-13 * exact_gram.abs().max()
    # Plain two-pass float64 sums miss the zero centred-constant entries by ~1e-11 here.
    flat = x.reshape(-1, 5)
    plain = flat - torch.cat([flat.mean(dim=0)[:-1], torch.zeros(1)]) if center else flat
    plain_gram = plain.T @ plain / n
    if center:
        assert (plain_gram - exact_gram).abs().max() > 1e-12


def test_layer_traits_come_from_the_model_not_from_names():
    """The statistics and the bases read a layer's traits from where its model declares them
    (``Step``), whatever the layer is called: a variance-first layer named like no LayerNorm
    keeps its variance out of the rotation, and final outputs named like a hidden layer carry
    no constant."""
    from interaction_basis.lib.fit import fit_layer_basis
    from interaction_basis.models.sectioned import Step, build_sectioned_model

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 4, generator=gen, dtype=torch.float64)

    def affine(x):  # keeps the constant coordinate
        return torch.cat([x[..., :-1] @ w[:3, :3], x[..., -1:]], dim=-1)

    def logits(x):  # no constant coordinate
        return x[..., :-1] @ w[:3, :2]

    steps = [Step("a", affine, variance_first=True), Step("b", logits)]
    model = build_sectioned_model(lambda x: x, steps, "layers.9", ["a", "b", "layers.9"])
    assert model.traits("a") == LayerTraits(constant=True, variance_first=True)
    assert model.traits("b") == LayerTraits()
    assert model.traits("layers.9") == LayerTraits(constant=False)
    x = torch.randn(40, 2, 4, generator=gen, dtype=torch.float64)
    x[..., -1] = 1.0
    source = batches_from_tensors(model.activations(x), BATCH)
    stats = {n: compute_layer_statistics(source, n, model.traits(n)) for n in model.node_layers}
    assert stats["layers.9"].mean[-1] != 1.0  # no constant to pin to 1
    assert fit_layer_basis(stats["a"], "a", "pca").n_masked == 2  # constant and variance
    assert fit_layer_basis(stats["b"], "b", "pca").n_masked == 1


def test_the_generic_maths_names_no_layer():
    """lib/ decides nothing by a layer's name (issue 24)."""
    lib = Path(__file__).resolve().parents[2] / "src" / "interaction_basis" / "lib"
    for path in lib.rglob("*.py"):
        text = path.read_text()
        for name in ('"output"', "ln1_out", "ln2_out", '"unembed"'):
            assert name not in text, (path.name, name)
