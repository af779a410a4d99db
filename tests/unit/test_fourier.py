"""Fourier labels of modular-addition features (method §C.1.4) on synthetic features."""

import numpy as np
import pytest
import torch

from interaction_basis.interpret.fourier import (
    compute_cluster_labels,
    compute_dominant_frequencies,
    compute_dominant_terms,
    compute_frequency_power,
    compute_top_terms,
    describe_feature,
)

P = 113


def grid(p: int = P) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` of every input, ordered ``index = a * p + b`` (build_modadd_dataset)."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def wave(k: float, x: np.ndarray, phase: float = 0.0, p: int = P) -> np.ndarray:
    return np.cos(2 * np.pi * k * x / p + phase)


def synthetic_features() -> np.ndarray:
    a, b = grid()
    feats = [
        np.full(P * P, 3.7),  # constant (like LIB feature 0)
        wave(36, a) + wave(36, b),  # ln1.0-like
        wave(49, a + b, 0.3),  # unembed-like
        wave(38, a) * wave(38, b),  # ln2.0-like product term
        wave(3, a) * wave(5, b),  # mixed: 3a ± 5b
        2.0 + wave(36, a, 1.0) + 0.3 * wave(49, b),  # mostly 36, some 49, with an offset
    ]
    return np.stack(feats, axis=1)


def test_power_fractions_sum_to_one():
    power = compute_frequency_power(synthetic_features())
    assert power.frequency.shape == (6, P // 2 + 1) and power.spectrum.shape == (6, P, P)
    sums = power.frequency.sum(axis=1) + power.mixed
    np.testing.assert_allclose(sums[1:], 1.0, atol=1e-12)
    np.testing.assert_allclose(power.spectrum[1:].sum(axis=(1, 2)), 1.0, atol=1e-12)
    assert (power.frequency[:, 0] == 0).all() and (power.spectrum[:, 0, 0] == 0).all()
    # The constant feature has no non-DC power (rounding noise aside): all fractions 0.
    assert power.total[0] == 0 and sums[0] == 0


def test_dominant_frequencies():
    power = compute_frequency_power(synthetic_features())
    freq, share = compute_dominant_frequencies(power)
    assert freq.tolist()[:4] == [-1, 36, 49, 38]
    assert freq[5] == 36
    np.testing.assert_allclose(share[1:4], 1.0, atol=1e-12)
    assert power.mixed[4] == pytest.approx(1.0)
    # 0.3² / (1 + 0.3²) of feature 5's power is at 49.
    assert power.frequency[5, 49] == pytest.approx(0.09 / 1.09)
    assert power.frequency[5, 36] == pytest.approx(1 / 1.09)


def test_torch_input_and_other_moduli():
    p = 7
    a, b = grid(p)
    x = torch.as_tensor(np.stack([wave(2, a, p=p), wave(3, a - b, p=p)], axis=1))
    power = compute_frequency_power(x, modulus=p)
    freq, _ = compute_dominant_frequencies(power)
    assert freq.tolist() == [2, 3] and power.frequency.shape == (2, 4)


def test_top_terms_and_description():
    power = compute_frequency_power(synthetic_features())
    terms = dict(compute_top_terms(power, 1))
    assert set(terms) >= {"36a", "36b"} and terms["36a"] == pytest.approx(0.5)
    assert compute_top_terms(power, 2, n_terms=1) == [("49(a+b)", pytest.approx(1.0))]
    product = dict(compute_top_terms(power, 3, n_terms=2))
    assert product == {"38(a+b)": pytest.approx(0.5), "38(a-b)": pytest.approx(0.5)}
    assert {name for name, _ in compute_top_terms(power, 4, n_terms=2)} == {"3a+5b", "3a-5b"}
    assert describe_feature(power, 0) == "constant"
    assert describe_feature(power, 2) == "49(a+b) (100%)"


def test_cluster_labels():
    feats = synthetic_features()
    powers = {"x": compute_frequency_power(feats), "y": compute_frequency_power(feats[:, ::-1])}
    # y reverses the features: y:0 is feature 5 (36 & 49), y:5 the constant; only x:0 is
    # flagged as a constant node.
    clusters = [
        {"x": [0, 1], "y": [0]},  # constant x:0 skipped; 36 dominates
        {"x": [2], "y": [3]},  # y:3 is x:2 -> 49
        {"x": [3]},
        {"x": [0]},  # only the constant: unlabelled
        {"y": [5]},  # y:5 is constant but not feature 0: skipped as zero-power
    ]
    labels = compute_cluster_labels(clusters, powers, constant_layers=["x"])
    assert [lab.frequency for lab in labels] == [36, 49, 38, -1, -1]
    assert [lab.n_features for lab in labels] == [2, 2, 1, 0, 0]
    assert labels[0].share == pytest.approx((1 + 1 / 1.09) / 2)
    assert labels[1].share == pytest.approx(1.0)
    np.testing.assert_allclose(labels[0].frequencies.sum() + labels[0].mixed_share, 1.0)


def test_errors():
    with pytest.raises(ValueError, match="12769"):
        compute_frequency_power(np.zeros((100, 2)))
    with pytest.raises(ValueError, match="NaN"):
        compute_frequency_power(np.full((P * P, 1), np.nan))
    power = compute_frequency_power(synthetic_features())
    with pytest.raises(ValueError, match="powers only covers"):
        compute_cluster_labels([{"z": [1]}], {"x": power})
    with pytest.raises(ValueError, match="out of range"):
        compute_cluster_labels([{"x": [99]}], {"x": power})


def test_dominant_terms_agree_with_top_terms():
    power = compute_frequency_power(synthetic_features())
    names, shares = compute_dominant_terms(power)
    for i, (name, share) in enumerate(zip(names, shares, strict=True)):
        top = compute_top_terms(power, i, n_terms=1)
        if not top:
            assert (name, share) == ("", 0.0)
            continue
        # Ties (e.g. 36a and 36b at 50% each) may pick either: compare the share, and the name
        # where the top term is unique.
        assert share == pytest.approx(top[0][1], abs=1e-12)
        if len(compute_top_terms(power, i, n_terms=2)) < 2 or not np.isclose(
            compute_top_terms(power, i, n_terms=2)[1][1], share
        ):
            assert name == top[0][0]
