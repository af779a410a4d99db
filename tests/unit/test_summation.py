"""Compensated sums: correctly rounded, hence independent of order and grouping."""

import math

import numpy as np
import torch

from interaction_basis.lib.summation import CompensatedSum, two_sum


def _terms(seed: int, n_terms: int = 300, n_entries: int = 400) -> torch.Tensor:
    """Terms over 30 decades whose sums cancel: the hard case for float64 accumulation."""
    rng = np.random.default_rng(seed)
    mags = 10.0 ** rng.uniform(-15, 15, size=(n_terms, n_entries))
    terms = rng.standard_normal((n_terms, n_entries)) * mags
    terms[n_terms // 2 :] = -terms[: n_terms - n_terms // 2] * (1 + 1e-9)
    return torch.from_numpy(rng.permuted(terms, axis=0))


def _accumulate(terms: torch.Tensor) -> CompensatedSum:
    acc = CompensatedSum.zeros(terms.shape[1:])
    for t in terms:
        acc = acc.add(t)
    return acc


def test_two_sum_is_exact():
    a = torch.tensor([1.0, 1e16, 0.1, -3.0], dtype=torch.float64)
    b = torch.tensor([1e-17, 1.0, 0.2, 3.0], dtype=torch.float64)
    s, e = two_sum(a, b)
    for ai, bi, si, ei in zip(a.tolist(), b.tolist(), s.tolist(), e.tolist(), strict=True):
        assert math.fsum([ai, bi, -si, -ei]) == 0.0


def test_total_is_the_correctly_rounded_sum():
    terms = _terms(0)
    total = _accumulate(terms).value()
    exact = [math.fsum(terms[:, j].tolist()) for j in range(terms.shape[1])]
    assert total.tolist() == exact
    # Plain float64 accumulation is wrong in many entries here: the test has teeth.
    plain = torch.zeros(terms.shape[1], dtype=torch.float64)
    for t in terms:
        plain += t
    assert (plain != torch.tensor(exact)).sum() > 100


def test_total_does_not_depend_on_order_or_grouping():
    terms = _terms(1)
    reference = _accumulate(terms).value()
    rng = np.random.default_rng(2)
    for _ in range(5):
        shuffled = terms[torch.from_numpy(rng.permutation(len(terms)))]
        cuts = sorted(rng.choice(np.arange(1, len(terms)), size=3, replace=False))
        parts = [_accumulate(torch.from_numpy(p)) for p in np.split(shuffled.numpy(), cuts)]
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p)
        assert torch.equal(merged.value(), reference)
