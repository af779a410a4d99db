"""Ablation schedules, bisection, edge masks and node/edge ablations on tiny models."""

import math
from collections.abc import Callable

import pytest
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from factories import full_build, tiny_mlp, tiny_modadd
from interaction_basis.evaluate.ablated_sections import make_group_output
from interaction_basis.evaluate.ablation import (
    _assemble,
    _mask_groups,
    bisect_minimum,
    compute_ce_loss,
    compute_edge_ablation_scores,
    compute_edge_mask,
    compute_edge_threshold,
    compute_edges_required,
    compute_exponential_schedule,
    compute_linear_schedule,
    compute_metric,
    compute_node_ablation_matrix,
    compute_node_ablation_scores,
    compute_unablated_score,
)
from interaction_basis.graph.edge_mass import compute_edge_mass_counts
from interaction_basis.lib.closed_form.attention import LastPositionAttention
from interaction_basis.lib.records import Basis
from interaction_basis.models.mlp import MLP, build_mlp_sections

# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def test_exponential_schedule_reproduces_the_modadd_kept_counts():
    """method §C.1.2: n = 129, cutoff 10, base 1.05 -> 0..11, 13, 15, ..., 125, 129."""
    kept = compute_exponential_schedule(129, ablate_every_vec_cutoff=10, exp_base=1.05)
    expected = (
        list(range(12))
        + list(range(13, 41, 2))
        + [42, 45, 48, 51, 54, 57, 60, 63]
        + [67, 71, 75, 79, 83, 87]
        + [92, 97, 102, 107]
        + [113, 119, 125, 129]
    )
    assert kept == expected
    assert kept[:18] == [*range(12), 13, 15, 17, 19, 21, 23]
    assert kept[-2:] == [125, 129]


@pytest.mark.parametrize(
    ("n", "cutoff", "ablated"),
    [  # the reference's docstring examples, as numbers of ablated vectors (base 2)
        (12, None, list(range(12, -1, -1))),
        (12, 0, [12, 11, 9, 5, 0]),
        (12, 1, [12, 11, 10, 8, 4, 0]),
        (12, 3, [12, 11, 10, 9, 8, 6, 2, 0]),
        (24, 3, [24, 23, 22, 21, 20, 18, 14, 6, 0]),
    ],
)
def test_exponential_schedule_reference_examples(n, cutoff, ablated):
    kept = compute_exponential_schedule(n, ablate_every_vec_cutoff=cutoff, exp_base=2.0)
    assert kept == sorted(n - a for a in ablated)


def test_schedules_specific_points_and_linear():
    assert compute_linear_schedule(12, n_points=3) == [0, 6, 12]
    assert compute_linear_schedule(10, n_points=4) == [0, 4, 7, 10]  # int(linspace) ablated
    kept = compute_exponential_schedule(
        12, ablate_every_vec_cutoff=0, exp_base=2.0, specific_points=[5, 40]
    )
    assert kept == [0, 1, 3, 5, 7, 12]
    with pytest.raises(ValueError, match="cutoff"):
        compute_exponential_schedule(12, ablate_every_vec_cutoff=12)
    with pytest.raises(ValueError, match="n_points"):
        compute_linear_schedule(5, n_points=7)


# ---------------------------------------------------------------------------------------------
# Bisection
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["linear", "logarithmic"])
@pytest.mark.parametrize(("lo", "hi"), [(0, 1), (0, 2), (0, 16641), (3, 40), (-7, 9), (0, 14706)])
def test_bisect_minimum_finds_the_exact_boundary(scaling, lo, hi):
    thresholds = {lo - 5, lo, lo + 1, lo + 2, (lo + hi) // 2, hi - 1, hi, hi + 3, lo + 133}
    for t in sorted(thresholds):
        calls = []

        def score(x, calls=calls):
            calls.append(x)
            return float(x)

        res = bisect_minimum(score, lo, hi, lambda s, t=t: s >= t, scaling=scaling)
        assert res.minimum == min(max(t, lo + 1), hi), (t, res)
        assert res.largest_bad == res.minimum - 1
        assert all(lo < x < hi for x in calls), "lo and hi are never evaluated"
        assert len(calls) == len(set(calls)) == len(res.scores)
        assert len(calls) <= 2 * math.ceil(math.log2(hi - lo + 1)) + 2


def _reference_bisect(n_vecs, is_good_ablated, scaling):
    """The reference BisectSchedule, in numbers of *ablated* edges (method §E)."""
    upper, lower, proposals = n_vecs, 0, []
    while upper - lower > 1:
        if scaling == "linear":
            p = (upper + lower) // 2
        else:
            p = 0 if lower == 0 else int(math.exp((math.log(upper) + math.log(lower)) / 2))
        if p == lower:
            p += 1
        if p == upper:
            p -= 1
        proposals.append(p)
        if is_good_ablated(p):
            lower = p
        else:
            upper = p
    return n_vecs - lower, proposals


@pytest.mark.parametrize("scaling", ["linear", "logarithmic"])
def test_bisect_minimum_follows_the_reference_proposals_on_a_noisy_score(scaling):
    """Real scores are not monotone, so the proposal sequence itself must match the reference."""
    gen = torch.Generator().manual_seed(1)
    total = 16641
    noise = torch.rand(total + 1, generator=gen)
    good_kept = (torch.arange(total + 1) >= 2000) ^ (noise < 0.1)  # flips 10% of the answers
    expected, ablated = _reference_bisect(total, lambda a: bool(good_kept[total - a]), scaling)
    res = bisect_minimum(
        lambda k: float(good_kept[k]), 0, total, lambda s: s > 0.5, scaling=scaling
    )
    assert res.minimum == expected
    assert list(res.scores) == [total - a for a in ablated]


def test_bisect_minimum_tolerance_and_errors():
    res = bisect_minimum(float, 0, 1000, lambda s: s >= 377, tolerance=8)
    assert res.minimum - res.largest_bad <= 8
    assert res.minimum >= 377 > res.largest_bad
    with pytest.raises(ValueError, match="lo < hi"):
        bisect_minimum(float, 5, 5, bool)
    with pytest.raises(ValueError, match="tolerance"):
        bisect_minimum(float, 0, 5, bool, tolerance=0)
    with pytest.raises((ValueError, TypeError), match="scaling"):  # TypeError: jaxtyping hook
        bisect_minimum(float, 0, 5, bool, scaling="cubic")


# ---------------------------------------------------------------------------------------------
# Metrics, masks, mass concentration
# ---------------------------------------------------------------------------------------------


def test_metrics():
    logits = torch.tensor([[[9.0, 0, 0], [0, 0, 1.0]], [[0, 0, 9.0], [0, 3.0, 0]]])
    assert compute_metric([(logits, torch.tensor([2, 1]))], "accuracy") == 1.0  # last position
    assert compute_metric([(logits, torch.tensor([0, 1]))], "accuracy") == 0.5
    labels = torch.tensor([[0, 2], [2, 1]])
    full = compute_ce_loss(logits, labels)
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1))
    assert full == pytest.approx(float(manual))
    # ce_loss: mean of batch means, so a short last batch weighs as much as a full one
    a, b = (logits, labels), (logits[:1], labels[:1])
    expected = (compute_ce_loss(*a) + compute_ce_loss(*b)) / 2
    assert compute_metric([a, b], "ce_loss") == pytest.approx(expected)
    assert compute_metric(
        [(logits, torch.tensor([2, 0])), (logits[:1], torch.tensor([2]))], "accuracy"
    ) == pytest.approx(2 / 3)
    with pytest.raises((ValueError, TypeError), match="metric"):
        compute_metric([a], "f1")
    with pytest.raises(ValueError, match="match"):
        compute_ce_loss(logits[:, -1], torch.zeros(2, 3, dtype=torch.long))


def test_edge_mask():
    e = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    expected = torch.tensor([[True, False, False], [True, False, False], [True, True, True]])
    assert torch.equal(compute_edge_mask(e, 2), expected)  # the reference's docstring example
    assert torch.equal(compute_edge_mask(e, 0), torch.tensor([[True, False, False]] * 3))
    assert compute_edge_mask(e, 7).all()
    assert compute_edge_mask(e, 6)[:, 1:].all()
    assert compute_edge_mask(e, 2, keep_constant_input=False).sum() == 2
    ties = torch.tensor([[5.0, 1.0, 1.0], [5.0, 2.0, 1.0]])
    assert compute_edge_mask(ties, 2)[:, 1:].sum() == 4  # ties keep more edges
    assert compute_edge_threshold(e, expected) == pytest.approx(0.8)  # ignores row/col 0
    assert compute_edge_threshold(e, expected, ignore_constant=False) == pytest.approx(0.1)


def test_edge_mass_counts():
    e = torch.tensor([[100.0, 5.0, 3.0], [100.0, 1.0, 1.0]])  # column 0 (constant) ignored
    counts = compute_edge_mass_counts(e, (0.5, 0.8, 0.9, 0.95, 1.0))
    assert counts == {0.5: 1, 0.8: 2, 0.9: 3, 0.95: 4, 1.0: 4}
    with pytest.raises(ValueError, match="non-negative"):
        compute_edge_mass_counts(-e)


# ---------------------------------------------------------------------------------------------
# Node ablation
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lib():
    model, tokens = tiny_modadd(0)
    _, _, bases, _, edges = full_build(model, tokens)
    labels = (tokens[:, 0] + tokens[:, 1]) % 6
    return model, tokens, labels, bases, edges


@pytest.mark.parametrize("metric", ["accuracy", "ce_loss"])
def test_node_ablation_keeping_everything_is_the_unablated_score(tiny_lib, metric):
    model, tokens, labels, bases, _ = tiny_lib
    base = compute_unablated_score(model, tokens, labels, metric=metric, batch_size=7)
    for layer in model.node_layers[:-1]:
        orig, n_feat = bases[layer].C.shape
        scores = compute_node_ablation_scores(
            model,
            layer,
            bases[layer],
            tokens,
            labels,
            [orig, n_feat, 0],
            metric=metric,
            batch_size=7,
        )
        assert scores[orig] == base and scores[n_feat] == base  # exactly: no projection
        if metric == "ce_loss":
            assert scores[0] != base


def test_node_ablation_matches_a_manual_projection(tiny_lib):
    model, tokens, labels, bases, _ = tiny_lib
    layer, k = "ln2.0", 3
    basis = bases[layer]
    r = compute_node_ablation_matrix(basis.C, basis.C_pinv, k)
    assert torch.allclose(r, basis.C[:, :k] @ basis.C_pinv[:k], atol=1e-12)
    with torch.no_grad():
        x = model.activations(tokens)[layer]
        logits = model.forward_from(layer, x @ r)
    expected = compute_ce_loss(logits, labels)
    got = compute_node_ablation_scores(
        model, layer, basis, tokens, labels, [k], metric="ce_loss", batch_size=100
    )
    assert got[k] == pytest.approx(expected, rel=1e-12)


def test_node_ablation_errors(tiny_lib):
    model, tokens, labels, bases, _ = tiny_lib
    with pytest.raises(ValueError, match="n_kept"):
        compute_node_ablation_scores(model, "ln1.0", bases["ln1.0"], tokens, labels, [99])
    with pytest.raises(ValueError, match="Unknown node layer"):
        compute_node_ablation_scores(model, "mlp", bases["ln1.0"], tokens, labels, [1])
    with pytest.raises(ValueError, match="last node layer"):
        compute_node_ablation_scores(model, "output", bases["output"], tokens, labels, [1])
    with pytest.raises(ValueError, match="coordinates"):
        compute_node_ablation_scores(model, "ln1.0", bases["output"], tokens, labels, [1])
    with pytest.raises(ValueError, match="equal length"):
        compute_node_ablation_scores(model, "ln1.0", bases["ln1.0"], tokens, labels[:3], [1])


# ---------------------------------------------------------------------------------------------
# Edge ablation
# ---------------------------------------------------------------------------------------------


def _random_basis(d: int, seed: int) -> Basis:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(d, d, generator=gen, dtype=torch.float64) + 3 * torch.eye(
        d, dtype=torch.float64
    )
    return Basis(c, torch.linalg.inv(c), torch.ones(d, dtype=torch.float64), 0)


def _naive_edge_ablation(section, x, mask, b_in, b_out):
    """One section call per output feature (the definition in method §E)."""
    f_in = x @ b_in.C
    cols = []
    for j in range(mask.shape[0]):
        y = section(torch.where(mask[j], f_in, 0.0) @ b_in.C_pinv) @ b_out.C
        cols.append(y[..., j])
    return torch.stack(cols, -1) @ b_out.C_pinv


def edge_ablated_output(
    section: Callable[[Tensor], Tensor],
    x: Float[Tensor, "batch pos_in d_in"],
    mask: Bool[Tensor, "out in"],
    C_in: Float[Tensor, "d_in in"],
    C_in_pinv: Float[Tensor, "in d_in"],
    C_out: Float[Tensor, "d_out out"],
    C_out_pinv: Float[Tensor, "out d_out"],
) -> Float[Tensor, "batch pos_out d_out"]:
    """The section's output with the edges outside ``mask`` removed (method §E), uncached: one
    evaluation per distinct mask row, with the production pieces the cached edge ablation uses.

    Output feature ``j`` is computed from the input features ``mask[j]`` only:
    ``f̂_out[j] = (section(where(mask[j], x C_in, 0) C_in⁺) C_out)[j]``, then mapped back with
    ``C_out⁺``. Output features sharing a mask row share one evaluation over the whole batch
    (see :mod:`~interaction_basis.evaluate.ablated_sections`), so the cost scales with the number of
    distinct rows rather than output features.
    """
    if mask.shape != (C_out.shape[1], C_in.shape[1]):
        raise ValueError(
            f"Mask {tuple(mask.shape)} does not match the bases: expected "
            f"({C_out.shape[1]}, {C_in.shape[1]}) = (out features, in features)."
        )
    group_output = make_group_output(section, C_in_pinv, C_out, x.dtype)
    f_in = group_output.prepare(x @ C_in.to(x.dtype))
    parts = [
        (cols, group_output.evaluate(f_in, kept, cols)) for _, kept, cols in _mask_groups(mask)
    ]
    return _assemble(parts, C_out.shape[1]) @ C_out_pinv.to(x.dtype)


@pytest.mark.parametrize("layer", ["ln1.0", "ln2.0", "unembed"])
def test_edge_ablated_output_keeping_all_edges_is_the_section(tiny_lib, layer):
    model, tokens, *_ = tiny_lib
    idx = model.node_layers.index(layer)
    with torch.no_grad():
        acts = model.activations(tokens)
    x, expected = acts[layer], acts[model.node_layers[idx + 1]]
    b_in, b_out = _random_basis(x.shape[-1], 1), _random_basis(expected.shape[-1], 2)
    mask = torch.ones(b_out.C.shape[1], b_in.C.shape[1], dtype=torch.bool)
    got = edge_ablated_output(
        model.sections[idx], x, mask, b_in.C, b_in.C_pinv, b_out.C, b_out.C_pinv
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer", ["ln1.0", "ln2.0", "unembed"])
def test_edge_ablated_output_matches_the_per_feature_definition(tiny_lib, layer):
    model, tokens, _, bases, _ = tiny_lib
    idx = model.node_layers.index(layer)
    b_in, b_out = bases[layer], bases[model.node_layers[idx + 1]]
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(b_out.C.shape[1], b_in.C.shape[1], generator=gen) < 0.5
    mask[1::3] = mask[0]  # repeated rows exercise the grouping
    mask[2] = False
    with torch.no_grad():
        x = model.activations(tokens)[layer]
        got = edge_ablated_output(
            model.sections[idx], x, mask, b_in.C, b_in.C_pinv, b_out.C, b_out.C_pinv
        )
        expected = _naive_edge_ablation(model.sections[idx], x, mask, b_in, b_out)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_edge_ablated_output_of_mlp_layers_matches_the_definition(activation):
    """The folded path of hidden MLP layers (no residual, no W_out) and of the final linear."""
    module = MLP(5, [7, 6], 4, activation=activation, seed=2).double()
    model = build_mlp_sections(module.state_arrays(), activation=activation)
    inputs = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts = model.activations(inputs)
    gen = torch.Generator().manual_seed(4)
    for idx, layer in enumerate(model.node_layers[:-1]):
        x, out = acts[layer], acts[model.node_layers[idx + 1]]
        b_in, b_out = _random_basis(x.shape[-1], 1), _random_basis(out.shape[-1], 2)
        mask = torch.rand(b_out.C.shape[1], b_in.C.shape[1], generator=gen) < 0.5
        mask[1::2] = mask[0]
        with torch.no_grad():
            got = edge_ablated_output(
                model.sections[idx], x, mask, b_in.C, b_in.C_pinv, b_out.C, b_out.C_pinv
            )
            expected = _naive_edge_ablation(model.sections[idx], x, mask, b_in, b_out)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("repeated", [False, True])
def test_edge_ablated_attention_matches_the_definition_with_and_without_repeated_rows(repeated):
    """Attention's per-position distinct rows: all distinct (scores per sample) or few (scores
    from a table of distinct queries and keys)."""
    gen = torch.Generator().manual_seed(5)
    w = [torch.randn(6, 8, dtype=torch.float64, generator=gen) for _ in range(3)]
    section = LastPositionAttention(*w, torch.randn(8, 6, dtype=torch.float64, generator=gen), 2)
    x = torch.randn(40, 3, 6, dtype=torch.float64, generator=gen)
    if repeated:
        x = x[torch.randint(0, 4, (40,), generator=gen)]
    b_in, b_out = _random_basis(6, 1), _random_basis(6, 2)
    mask = torch.rand(6, 6, generator=gen) < 0.5
    mask[1::2] = mask[0]
    got = edge_ablated_output(section, x, mask, b_in.C, b_in.C_pinv, b_out.C, b_out.C_pinv)
    expected = _naive_edge_ablation(section, x, mask, b_in, b_out)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_edge_ablation_scores_do_not_depend_on_what_was_evaluated_before(tiny_lib):
    """Reused group outputs give the same scores as a fresh evaluation of each count."""
    model, tokens, labels, bases, edges = tiny_lib
    kw = dict(metric="ce_loss", batch_size=10)
    for (a, b), e in edges.items():
        counts = [20, 3, 12]
        together = compute_edge_ablation_scores(
            model, a, bases[a], bases[b], e, tokens, labels, counts, **kw
        )
        for k in counts:
            alone = compute_edge_ablation_scores(
                model, a, bases[a], bases[b], e, tokens, labels, [k], **kw
            )
            assert alone[k] == together[k], (a, k)


@pytest.mark.parametrize("metric", ["accuracy", "ce_loss"])
def test_edge_ablation_keeping_all_edges_is_the_unablated_score(tiny_lib, metric):
    model, tokens, labels, bases, edges = tiny_lib
    base = compute_unablated_score(model, tokens, labels, metric=metric, batch_size=10)
    for (a, b), e in edges.items():
        n_all = e[:, 1:].numel()
        scores = compute_edge_ablation_scores(
            model,
            a,
            bases[a],
            bases[b],
            e,
            tokens,
            labels,
            [n_all, n_all + 1, 0],
            metric=metric,
            batch_size=10,
        )
        assert scores[n_all] == base and scores[n_all + 1] == base
        if metric == "ce_loss":
            assert scores[0] != base


def test_edges_required_on_a_tiny_mlp():
    model, inputs = tiny_mlp(0)
    _, _, bases, _, edges = full_build(model, inputs)
    with torch.no_grad():
        labels = model.activations(inputs)["output"][:, -1].argmax(-1)
    pair = ("layers.1", "layers.2")
    e = edges[pair]
    kw = dict(metric="ce_loss", batch_size=16)
    base = compute_unablated_score(model, inputs, labels, **kw)
    res = compute_edges_required(
        model, pair[0], bases[pair[0]], bases[pair[1]], e, inputs, labels, delta=0.05, **kw
    )
    assert res.base_score == pytest.approx(base)
    assert res.total == bases[pair[0]].C.shape[0] * bases[pair[1]].C.shape[0]
    assert res.score <= base + 0.05
    assert 1 <= res.n_edges_required <= res.total
    if res.n_edges_required - 1 in res.scores:  # the bisect's last bad point, if evaluated
        assert res.scores[res.n_edges_required - 1] > base + 0.05
    assert torch.equal(res.mask, compute_edge_mask(e, res.n_edges_required))
    assert res.epsilon == compute_edge_threshold(e, res.mask)
    assert res.n_kept_last == list(res.scores)[-1]
    # the bisection reuses group outputs between its proposals: the scores are unchanged
    again = compute_edge_ablation_scores(
        model, pair[0], bases[pair[0]], bases[pair[1]], e, inputs, labels, list(res.scores), **kw
    )
    assert again == res.scores
    # an unlimited budget: one edge is enough; no budget beyond float noise: all or nearly all
    loose = compute_edges_required(
        model, pair[0], bases[pair[0]], bases[pair[1]], e, inputs, labels, delta=math.inf, **kw
    )
    assert loose.n_edges_required == 1
    with pytest.raises(ValueError, match="expected"):
        compute_edges_required(
            model, pair[0], bases[pair[0]], bases[pair[1]], e.T, inputs, labels, **kw
        )
