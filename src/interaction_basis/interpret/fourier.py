"""Fourier labels for modular-addition features (method §C.1.4).

A feature is evaluated on all ``modulus**2`` inputs ``(a, b)``, ordered ``index = a * modulus +
b``. Its 2-D DFT over ``(a, b)`` splits the non-constant part of the feature into Fourier terms
``(k_a, k_b)``; a real feature has equal power at ``(k_a, k_b)`` and ``(-k_a, -k_b)``. Folding
each component ``k -> min(k, modulus - k)`` gives the frequencies of a term; a term belongs to
frequency ``f`` when its folded components are ``{0, f}`` (``cos(f a)``, ``cos(f b)``) or
``{f, f}`` (``cos(f (a ± b))``, and so ``cos(f a) cos(f b)``). Terms with two different non-zero
frequencies are "mixed".
"""

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


class FrequencyPower(NamedTuple):
    """Power fractions of one layer's features, the DC term excluded.

    Attributes:
        spectrum: (feature, ka, kb) power fraction of every DFT term; ``spectrum[:, 0, 0]`` is 0.
        frequency: (feature, freq) power fraction of frequency ``f`` in column ``f``, for
            ``f = 0..modulus // 2``; column 0 is always 0 (the DC term is excluded).
        mixed: (feature,) power fraction of the terms mixing two different frequencies.
        total: (feature,) the non-DC power ``Σ |F|²`` (``modulus²`` times the sum of squared
            deviations from the mean); features with ``total`` 0 have all fractions 0.
        modulus: the modulus ``p``.
    """

    spectrum: Float[np.ndarray, "feature ka kb"]
    frequency: Float[np.ndarray, "feature freq"]
    mixed: Float[np.ndarray, " feature"]
    total: Float[np.ndarray, " feature"]
    modulus: int


class ClusterLabel(NamedTuple):
    """The frequency that names a cluster.

    Attributes:
        frequency: the frequency with most summed power over the labelled features; -1 when the
            cluster has no labelled feature.
        share: that frequency's mean power fraction over the labelled features.
        mixed_share: mean power fraction of mixed terms over the labelled features.
        n_features: number of labelled (non-constant, non-zero) member features.
        frequencies: mean power fraction per frequency (index = frequency).
    """

    frequency: int
    share: float
    mixed_share: float
    n_features: int
    frequencies: Float[np.ndarray, " freq"]


def _fold(k: np.ndarray, modulus: int) -> np.ndarray:
    return np.minimum(k, modulus - k)


def compute_frequency_power(
    features: Float[Tensor, "sample feature"] | Float[np.ndarray, "sample feature"],
    *,
    modulus: int = 113,
) -> FrequencyPower:
    """Per feature, the power fraction of each Fourier term and of each frequency.

    Args:
        features: activations of a layer's features on all inputs, ordered
            ``index = a * modulus + b`` (``build_modadd_dataset``). For ``ln1.0`` sum the
            features over the three positions first (method §C.1.4).
        modulus: the modulus ``p``; ``features`` must have ``p²`` rows.

    Returns:
        The power fractions; per feature, ``frequency.sum() + mixed`` is 1 (0 for a constant
        feature).
    """
    if modulus < 2:
        raise ValueError(f"modulus must be at least 2, got {modulus}.")
    x = (
        features.detach().to("cpu", torch.float64).numpy()
        if isinstance(features, Tensor)
        else np.asarray(features, dtype=np.float64)
    )
    if x.shape[0] != modulus**2:
        raise ValueError(
            f"Expected {modulus**2} = {modulus}² rows (all inputs, index = a*{modulus}+b), got "
            f"{x.shape[0]}; evaluate the features on the full dataset, not the train split."
        )
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN/inf values.")
    grid = x.T.reshape(x.shape[1], modulus, modulus)  # (feature, a, b)
    power = np.abs(np.fft.fft2(grid, axes=(1, 2))) ** 2
    power[:, 0, 0] = 0.0
    total = power.sum(axis=(1, 2))
    # A constant feature keeps float64 rounding noise (~1e-13 relative); below 1e-10 relative
    # to the mean it is treated as constant.
    dc = np.abs(grid.sum(axis=(1, 2))) ** 2
    zero = total <= 1e-20 * np.maximum(dc, 1.0)
    spectrum = np.divide(
        power, total[:, None, None], out=np.zeros_like(power), where=~zero[:, None, None]
    )

    k = np.arange(modulus)
    fa, fb = np.meshgrid(_fold(k, modulus), _fold(k, modulus), indexing="ij")
    lo, hi = np.minimum(fa, fb), np.maximum(fa, fb)
    pure = (lo == 0) | (lo == hi)
    n_freq = modulus // 2 + 1
    frequency = np.zeros((x.shape[1], n_freq))
    for f in range(1, n_freq):
        frequency[:, f] = spectrum[:, pure & (hi == f)].sum(axis=1)
    mixed = spectrum[:, ~pure].sum(axis=1)
    return FrequencyPower(spectrum, frequency, mixed, np.where(zero, 0.0, total), modulus)


def compute_dominant_frequencies(
    power: FrequencyPower,
) -> tuple[Int[np.ndarray, " feature"], Float[np.ndarray, " feature"]]:
    """Per feature, the frequency with most power and its power fraction.

    Returns:
        (frequency, share); frequency is -1 for a feature without non-DC power.
    """
    best = power.frequency.argmax(axis=1)
    share = power.frequency[np.arange(len(best)), best]
    return np.where(power.total > 0, best, -1).astype(np.int64), share


def compute_cluster_labels(
    clusters: Sequence[Mapping[str, Sequence[int]]],
    powers: Mapping[str, FrequencyPower],
    *,
    constant_layers: Collection[str] | None = None,
) -> list[ClusterLabel]:
    """Name each cluster by the frequency carrying most power over its member features.

    Every labelled member contributes its normalised power fractions (each feature weighs the
    same); constant features (feature 0 of ``constant_layers``) and features without non-DC
    power are skipped.

    Args:
        clusters: per cluster, ``{layer: feature indices}`` (``Modules.cluster_features``).
        powers: :func:`compute_frequency_power` per layer named in ``clusters``.
        constant_layers: layers whose feature 0 is the constant node; default every layer in
            ``powers`` but ``output``.

    Returns:
        One :class:`ClusterLabel` per cluster, in order.
    """
    if constant_layers is None:
        constant_layers = [lay for lay in powers if lay != "output"]
    moduli = {p.modulus for p in powers.values()}
    if len(moduli) > 1:
        raise ValueError(f"All layers must share one modulus, got {sorted(moduli)}.")
    n_freq = next(iter(moduli)) // 2 + 1 if moduli else 1
    labels = []
    for c, members in enumerate(clusters):
        acc, mixed, n = np.zeros(n_freq), 0.0, 0
        for layer, idx in members.items():
            if layer not in powers:
                raise ValueError(
                    f"Cluster {c} has features of layer {layer!r}, but powers only covers "
                    f"{sorted(powers)}."
                )
            p = powers[layer]
            for i in idx:
                if not 0 <= i < len(p.total):
                    raise ValueError(f"Feature {i} of layer {layer!r} is out of range.")
                if (i == 0 and layer in constant_layers) or p.total[i] <= 0:
                    continue
                acc += p.frequency[i]
                mixed += float(p.mixed[i])
                n += 1
        if n == 0:
            labels.append(ClusterLabel(-1, 0.0, 0.0, 0, acc))
            continue
        acc /= n
        best = int(acc.argmax())
        labels.append(ClusterLabel(best, float(acc[best]), mixed / n, n, acc))
    return labels


def _term_name(sa: int, sb: int) -> str:
    if sa == 0:
        return f"{sb}b"
    if sb == 0:
        return f"{sa}a"
    if sa == sb:
        return f"{sa}(a+b)"
    if sa == -sb:
        return f"{sa}(a-b)"
    return f"{sa}a{sb:+d}b"


def compute_top_terms(
    power: FrequencyPower, feature: int, *, n_terms: int = 3, min_fraction: float = 1e-6
) -> list[tuple[str, float]]:
    """The strongest Fourier terms of one feature, conjugate pairs merged.

    A term ``"36a"`` stands for ``cos(2π·36·a/p + φ)``, ``"36(a+b)"`` for
    ``cos(2π·36·(a+b)/p + φ)``, ``"36a-38b"`` for a mixed term.

    Returns:
        ``[(name, power fraction), ...]``, strongest first, at most ``n_terms`` of them and none
        below ``min_fraction`` (rounding noise).
    """
    m = power.modulus
    spec = power.spectrum[feature]
    signed = np.where(np.arange(m) <= m // 2, np.arange(m), np.arange(m) - m)
    merged: dict[tuple[int, int], float] = {}
    for ka, kb in zip(*np.nonzero(spec > 0), strict=True):
        sa, sb = int(signed[ka]), int(signed[kb])
        if sa < 0 or (sa == 0 and sb < 0):
            sa, sb = -sa, -sb
        merged[(sa, sb)] = merged.get((sa, sb), 0.0) + float(spec[ka, kb])
    top = sorted(merged.items(), key=lambda kv: -kv[1])[:n_terms]
    top = [kv for kv in top if kv[1] >= min_fraction]
    return [(_term_name(sa, sb), frac) for (sa, sb), frac in top]


def describe_feature(power: FrequencyPower, feature: int, *, n_terms: int = 2) -> str:
    """A short label such as ``"36a (49%) + 36b (49%)"`` for one feature."""
    if power.total[feature] <= 0:
        return "constant"
    terms = compute_top_terms(power, feature, n_terms=n_terms)
    return " + ".join(f"{name} ({100 * frac:.0f}%)" for name, frac in terms)


def compute_dominant_terms(
    power: FrequencyPower,
) -> tuple[list[str], Float[np.ndarray, " feature"]]:
    """Per feature, the strongest Fourier term (conjugate pairs merged), named as in
    :func:`compute_top_terms`, and its power fraction; ``""`` and 0 without non-DC power.

    The same answer as ``compute_top_terms(power, i, n_terms=1)`` for every feature at once."""
    m = power.modulus
    k = np.arange(m)
    # A real feature's spectrum is conjugate-symmetric: the pair's power is twice the term's,
    # except for self-conjugate terms (both components 0 or m/2).
    partner = ((-k[:, None]) % m) * m + (-k[None, :]) % m
    pair = power.spectrum + power.spectrum.reshape(len(power.total), -1)[:, partner]
    self_conj = partner == (k[:, None] * m + k[None, :])
    pair[:, self_conj] /= 2
    flat = pair.reshape(len(pair), -1)
    best = flat.argmax(axis=1)
    share = flat[np.arange(len(best)), best]
    signed = np.where(k <= m // 2, k, k - m)
    names = []
    for b, total in zip(best, power.total, strict=True):
        sa, sb = int(signed[b // m]), int(signed[b % m])
        if sa < 0 or (sa == 0 and sb < 0):
            sa, sb = -sa, -sb
        names.append(_term_name(sa, sb) if total > 0 else "")
    return names, np.where(power.total > 0, share, 0.0)
