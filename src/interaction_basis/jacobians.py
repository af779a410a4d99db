"""Batched Jacobian contractions: M′ (lib_spec A.3 step 3) and squared edges (A.6).

Both are sums over (sample, output coordinate) of vector-Jacobian products. Instead of one
autograd call per output coordinate, one ``torch.func.vjp`` per batch and integration point is
``vmap``-ed over chunks of cotangents. Because samples are independent, a cotangent that covers
the whole batch returns every sample's gradient row at once. Results are *sums*; divide by the
number of (sample, input position) pairs to normalise, after adding batches or shards.
"""

from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

IntegrationMethod = Literal["gradient", "trapezoidal", "gauss-legendre"]

#: Bytes of gradient rows held at once; bounds memory independently of the output width.
DEFAULT_CHUNK_BYTES = 8 * 2**20  # small enough to stay in cache: 2-3x faster than 256 MiB


class Integration(NamedTuple):
    """An integration rule over the path ``α f``, α ∈ [0, 1] (lib_spec A.7)."""

    method: IntegrationMethod = "gradient"
    n_intervals: int = 0

    def points(self) -> tuple[list[float], list[float]]:
        """The α values and their weights (the weights sum to 1)."""
        n = self.n_intervals
        if self.method == "gradient":
            if n != 0:
                raise ValueError("Integration 'gradient' requires n_intervals = 0.")
            return [1.0], [1.0]
        if n < 0:
            raise ValueError(f"n_intervals must be ≥ 0, got {n}.")
        if self.method == "trapezoidal":
            if n == 0:
                return [0.5], [1.0]
            eps = 1e-3 / (n + 1)
            alphas = np.linspace(eps, 1 - eps, n + 1)
            weights = np.full(n + 1, 1.0 / n)
            weights[[0, -1]] /= 2
            return alphas.tolist(), weights.tolist()
        if self.method == "gauss-legendre":
            x, w = np.polynomial.legendre.leggauss(n + 1)
            return ((x + 1) / 2).tolist(), (w / 2).tolist()
        raise ValueError(
            f"Unknown integration method {self.method!r}; use gradient, trapezoidal or "
            "gauss-legendre."
        )


class Sources(NamedTuple):
    """Stochastic ±1 sources replacing the sum over output positions and/or dimensions.

    ``None`` means exact (one cotangent per output position / dimension).
    """

    n_pos: int | None = None
    n_hidden: int | None = None


class Cotangents(NamedTuple):
    """A chunk of cotangents and the output dimension each one belongs to (-1: mixed)."""

    values: Float[Tensor, "chunk batch pos_out d_out"]
    out_index: Tensor


def _iter_cotangents(
    batch: int,
    p_out: int,
    k_out: int,
    sources: Sources,
    chunk: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Iterator[Cotangents]:
    """Yield cotangent chunks: one-hot (exact) or random-sign (stochastic) over (pos, dim)."""

    def signs(*shape: int) -> Tensor:
        draw = torch.rand(*shape, generator=generator) > 0.5
        return (draw.to(dtype) * 2 - 1).to(device)

    if sources.n_pos is None and sources.n_hidden is None:
        total = p_out * k_out
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total))
            vals = torch.zeros(len(idx), batch, p_out * k_out, dtype=dtype, device=device)
            vals[torch.arange(len(idx)), :, idx] = 1.0
            yield Cotangents(vals.reshape(len(idx), batch, p_out, k_out), idx % k_out)
    elif sources.n_hidden is None:
        # One random sign per (source, output dim, sample, output position).
        n = sources.n_pos
        phi = signs(n * k_out, batch, p_out)
        total = n * k_out
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total))
            dims = idx % k_out
            vals = torch.zeros(len(idx), batch, p_out, k_out, dtype=dtype, device=device)
            vals[torch.arange(len(idx)), :, :, dims] = phi[idx]
            yield Cotangents(vals, dims)
    elif sources.n_pos is None:
        n = sources.n_hidden
        phi = signs(n * p_out, batch, k_out)
        total = n * p_out
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total))
            vals = torch.zeros(len(idx), batch, p_out, k_out, dtype=dtype, device=device)
            vals[torch.arange(len(idx)), :, idx % p_out, :] = phi[idx]
            yield Cotangents(vals, torch.full((len(idx),), -1))
    else:
        total = sources.n_pos * sources.n_hidden
        for start in range(0, total, chunk):
            m = min(chunk, total - start)
            yield Cotangents(signs(m, batch, p_out, k_out), torch.full((m,), -1))


def _source_scale(sources: Sources) -> float:
    return 1.0 / ((sources.n_pos or 1) * (sources.n_hidden or 1))


def _chunk_size(n_rows_per_cot: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, n_rows_per_cot * itemsize))


def _integrated_vjps(
    fn: Callable[[Tensor], Tensor], x: Tensor, integration: Integration
) -> tuple[tuple[int, ...], Callable[[Tensor], Tensor]]:
    """Output shape of ``fn`` and a vmap-able map cotangents -> ``Σ_α w_α ∂fn/∂g|_{αx}``."""
    alphas, weights = integration.points()
    pulls = []
    out_shape: tuple[int, ...] = ()
    for alpha in alphas:
        out, pull = torch.func.vjp(fn, x * alpha)
        out_shape = tuple(out.shape)
        pulls.append(pull)

    def pullback(cot: Tensor) -> Tensor:
        total = None
        for w, pull in zip(weights, pulls, strict=True):
            (g,) = pull(cot)
            total = g * w if total is None else total + g * w
        return total

    return out_shape, torch.func.vmap(pullback)


def _output_map(
    section: Callable[[Tensor], Tensor], c_out: Tensor | None
) -> Callable[[Tensor], Tensor]:
    if c_out is None:
        return section
    return lambda g: section(g) @ c_out


def compute_m_dash_sum(
    section: Callable[[Tensor], Tensor],
    acts: Float[Tensor, "batch pos_in d_in"],
    c_out: Float[Tensor, "d_out k_out"] | None,
    *,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    generator: torch.Generator | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Float[Tensor, "d_in d_in"]:
    """``Σ_x Σ_{t,i} Σ_s J̄_{t,i;s,:}^T J̄_{t,i;s,:}`` for one batch (float64).

    ``J̄`` is the integrated Jacobian of ``section(g) @ c_out`` at ``g = α · acts``. With
    stochastic sources the sum runs over sources instead and is divided by their count.
    Divide the result by ``N · P_in`` (summed over batches) to get ``M′``.
    """
    fn = _output_map(section, c_out)
    out_shape, pullback = _integrated_vjps(fn, acts, integration)
    batch, p_out, k_out = out_shape
    d_in = acts.shape[-1]
    chunk = _chunk_size(acts.numel(), acts.element_size(), chunk_bytes)
    m_dash = torch.zeros(d_in, d_in, dtype=torch.float64, device=acts.device)
    for cot in _iter_cotangents(
        batch, p_out, k_out, sources, chunk, acts.dtype, acts.device, generator
    ):
        rows = pullback(cot.values).reshape(-1, d_in).to(torch.float64)
        m_dash += rows.T @ rows
    return m_dash * _source_scale(sources)


def compute_edges_sum(
    section: Callable[[Tensor], Tensor],
    acts: Float[Tensor, "batch pos_in d_in"],
    c_in: Float[Tensor, "d_in k_in"],
    c_in_pinv: Float[Tensor, "k_in d_in"],
    c_out: Float[Tensor, "d_out k_out"] | None,
    *,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    generator: torch.Generator | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Float[Tensor, "k_out k_in"]:
    """``Σ_x Σ_t A_{t,i,j}(x)²`` for one batch (lib_spec A.6, ``squared``), in float64.

    ``A_{t,i,j} = Σ_α w_α Σ_s ∂F̂_{t,i}/∂g_{s,j}|_{g=α f̂} · f̂_{s,j}`` with
    ``F̂(f̂) = section(f̂ C⁺_in) C_out``. Divide by ``N · P_in`` to get ``E``.
    """
    if sources.n_hidden is not None:
        raise ValueError("Edges support stochastic sources over positions only (n_hidden: null).")
    fn = _output_map(section, c_out)
    feats = acts @ c_in
    recon = feats @ c_in_pinv
    # Differentiate with respect to the reconstructed activations and contract with C⁺ᵀ
    # afterwards: one VJP serves every input feature.
    out_shape, pullback = _integrated_vjps(fn, recon, integration)
    batch, p_out, k_out = out_shape
    k_in = c_in.shape[1]
    chunk = _chunk_size(acts.numel(), acts.element_size(), chunk_bytes)
    edges = torch.zeros(k_out, k_in, dtype=torch.float64, device=acts.device)
    for cot in _iter_cotangents(
        batch, p_out, k_out, sources, chunk, acts.dtype, acts.device, generator
    ):
        grads = pullback(cot.values) @ c_in_pinv.T  # (chunk, batch, pos_in, k_in)
        attributions = (grads * feats).sum(dim=2).to(torch.float64)  # sum over s inside
        edges.index_add_(0, cot.out_index.to(acts.device), attributions.square().sum(dim=1))
    return edges * _source_scale(sources)

