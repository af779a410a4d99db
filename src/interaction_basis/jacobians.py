"""Batched Jacobian contractions: M′ (lib_spec A.3 step 3) and squared edges (A.6).

Both are sums over (sample, output coordinate) of Jacobian products. There is no Python loop
over output coordinates: the Jacobian of a chunk of samples is taken in one ``torch.func`` call
``vmap``-ed over a chunk of directions, in whichever mode needs fewer of them (lib_spec F.4):

- reverse mode: ``vjp`` with a batch of cotangents (one per output coordinate or stochastic
  source). Because samples are independent, a cotangent that covers every sample of the chunk
  returns every sample's gradient row at once.
- forward mode: ``jvp`` with a batch of input tangents (one-hot input coordinates for M′; one
  tangent per input feature for the edges, which then need no contraction with ``C⁺``).

The choice uses a cost model (``n_directions × (section FLOPs + contraction)``) with the section's
FLOPs counted once on one sample. Samples are processed in sub-batches and directions in chunks
sized to keep the working set in cache; integration points are stacked along the batch so one
call serves them all. Results are *sums*; divide by the number of (sample, input position) pairs
to normalise, after adding batches or shards.
"""

from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

IntegrationMethod = Literal["gradient", "trapezoidal", "gauss-legendre"]
Mode = Literal["auto", "forward", "reverse"]

#: Bytes of per-call Jacobian rows (directions × samples × the larger of the section's input and
#: output); bounds memory independently of the widths and keeps the working set in cache.
DEFAULT_CHUNK_BYTES = 4 * 2**20

#: The mode used when a call does not name one ("auto": the cheaper by the cost model).
DEFAULT_MODE: Mode = "auto"


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


# --- stochastic sources ----------------------------------------------------------------------


class _Phi(NamedTuple):
    """The ±1 draws of one batch, stored as booleans (True: +1).

    Shapes: ``pos`` (n_pos, k_out, batch, p_out); ``hidden`` (n_hidden, p_out, batch, k_out);
    ``both`` (n_pos · n_hidden, batch, p_out, k_out); ``None``: exact.
    """

    kind: Literal["exact", "pos", "hidden", "both"]
    draws: Tensor | None

    @property
    def n_cot(self) -> int:
        d = self.draws
        return 0 if d is None else (d.shape[0] if self.kind == "both" else d.shape[0] * d.shape[1])


def _draw(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.rand(*shape, generator=generator) > 0.5


def _draw_sources(
    sources: Sources, batch: int, p_out: int, k_out: int, generator: torch.Generator | None
) -> _Phi:
    """The same draws, in the same generator order, as one cotangent per source would use."""
    n_pos, n_hid = sources.n_pos, sources.n_hidden
    if n_pos is None and n_hid is None:
        return _Phi("exact", None)
    if n_hid is None:  # one sign per (source, output dim, sample, output position)
        return _Phi("pos", _draw((n_pos * k_out, batch, p_out), generator).view(
            n_pos, k_out, batch, p_out))
    if n_pos is None:  # one sign per (source, output position, sample, output dim)
        return _Phi("hidden", _draw((n_hid * p_out, batch, k_out), generator).view(
            n_hid, p_out, batch, k_out))
    return _Phi("both", _draw((n_pos * n_hid, batch, p_out, k_out), generator))


def _signs(draws: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    return (draws.to(dtype) * 2 - 1).to(device)


def _source_scale(sources: Sources) -> float:
    return 1.0 / ((sources.n_pos or 1) * (sources.n_hidden or 1))


# --- chunking, integration points and the cost model -----------------------------------------


def _split(n: int, size: int) -> list[tuple[int, int]]:
    """``range(n)`` in ``ceil(n / size)`` near-equal contiguous pieces."""
    size = max(1, min(size, n))
    pieces = -(-n // size)
    bounds = [round(i * n / pieces) for i in range(pieces + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _plan(n_dirs: int, batch: int, bytes_per_dir_sample: int, chunk_bytes: int) -> tuple[int, int]:
    """(directions per call, samples per sub-batch): all directions of few samples if they fit."""
    per_sample = max(1, bytes_per_dir_sample) * n_dirs
    sub = max(1, min(batch, chunk_bytes // per_sample))
    dirs = max(1, min(n_dirs, chunk_bytes // (max(1, bytes_per_dir_sample) * sub)))
    return dirs, sub


class _Points(NamedTuple):
    alphas: list[float]
    weights: list[float]

    @property
    def n(self) -> int:
        return len(self.alphas)

    @property
    def trivial(self) -> bool:
        return self.alphas == [1.0] and self.weights == [1.0]

    def stack(self, x: Tensor) -> Tensor:
        """``[α_0 x; α_1 x; …]`` along the batch: one call serves every integration point."""
        if self.trivial:
            return x
        return torch.cat([x * a for a in self.alphas])

    def weight_tensor(self, like: Tensor) -> Tensor:
        return torch.tensor(self.weights, dtype=like.dtype, device=like.device)

    def replicate(self, v: Tensor, weighted: bool) -> Tensor:
        """``(c, b, …)`` -> ``(c, n·b, …)``, block ``a`` multiplied by ``w_a`` if ``weighted``."""
        if self.n == 1:
            return v * self.weights[0] if weighted and self.weights[0] != 1.0 else v
        c, b = v.shape[:2]
        rep = v.unsqueeze(1).expand(c, self.n, *v.shape[1:])
        if weighted:
            w = self.weight_tensor(v).view(1, self.n, *([1] * (v.ndim - 1)))
            rep = rep * w
        return rep.reshape(c, self.n * b, *v.shape[2:])

    def reduce(self, v: Tensor, weighted: bool) -> Tensor:
        """``(c, n·b, …)`` -> ``(c, b, …)``: the (weighted) sum over integration points."""
        if self.n == 1:
            return v * self.weights[0] if weighted and self.weights[0] != 1.0 else v
        c, nb = v.shape[:2]
        v = v.view(c, self.n, nb // self.n, *v.shape[2:])
        if weighted:
            return torch.einsum("ca...,a->c...", v, self.weight_tensor(v))
        return v.sum(dim=1)


def _section_flops(section: Callable[[Tensor], Tensor], x1: Tensor) -> float:
    """Matmul FLOPs of one sample's forward pass (0 where they cannot be counted)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            section(x1)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - only a cost estimate
        return 0.0


def _probe_forward(section: Callable[[Tensor], Tensor], x1: Tensor) -> bool:
    """Whether every op of the section has a forward-mode derivative."""
    try:
        torch.func.jvp(section, (x1,), (torch.zeros_like(x1),))
    except (NotImplementedError, RuntimeError):
        return False
    return True


def _choose(
    mode: Mode,
    section: Callable[[Tensor], Tensor],
    x1: Tensor,
    reverse_cost: Callable[[float], float],
    forward_cost: Callable[[float], float],
) -> Literal["forward", "reverse"]:
    """Resolve ``mode``; the costs are per sample, given the section's per-sample MACs."""
    if mode == "reverse":
        return "reverse"
    if mode == "auto":
        p_in, d_in = x1.shape[1:]
        # Elementwise work as a floor, so that matmul-free sections still compare sensibly.
        macs = _section_flops(section, x1) / 2 + 4.0 * p_in * d_in
        if reverse_cost(macs) <= forward_cost(macs):
            return "reverse"
    elif mode != "forward":
        raise ValueError(f"Unknown Jacobian mode {mode!r}; use auto, forward or reverse.")
    return "forward" if _probe_forward(section, x1) else "reverse"


def _out_shape(section: Callable[[Tensor], Tensor], x1: Tensor) -> tuple[int, int]:
    with torch.no_grad():
        out = section(x1)
    if out.ndim != 3 or out.shape[0] != 1:
        raise ValueError(
            f"A section must map (batch, pos, d) to (batch, pos, d), got {tuple(out.shape)} "
            f"from {tuple(x1.shape)}."
        )
    return int(out.shape[1]), int(out.shape[2])


# --- reverse mode: chunks of cotangents ------------------------------------------------------


class _Cotangents:
    """Cotangents of the raw section output ``(c, b, p_out, d_out)`` for one sub-batch.

    The output map ``@ C_out`` is applied to the cotangents directly (a one-hot cotangent of
    ``F C_out`` is a column of ``C_out`` for ``F``), instead of through autograd. Exact
    cotangents live in a zero buffer that is reused: only the entries set are cleared.
    """

    def __init__(
        self, phi: _Phi, p_out: int, k_out: int, c_out: Tensor | None, dtype, device
    ) -> None:
        self.phi, self.p_out, self.k_out = phi, p_out, k_out
        self.c_out_t = None if c_out is None else c_out.T.contiguous()
        self.dtype, self.device = dtype, device
        self.buffer: Tensor | None = None

    @property
    def n_cot(self) -> int:
        return self.phi.n_cot if self.phi.kind != "exact" else self.p_out * self.k_out

    @property
    def d_out(self) -> int:
        return self.k_out if self.c_out_t is None else self.c_out_t.shape[1]

    def _zeros(self, c: int, b: int) -> Tensor:
        shape = (c, b, self.p_out, self.d_out)
        buf = self.buffer
        if buf is None or buf.shape[0] < c or buf.shape[1] != b:
            buf = self.buffer = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return buf[:c]

    def _signs(self, draws: Tensor) -> Tensor:
        return _signs(draws, self.dtype, self.device)

    def chunk(self, start: int, stop: int, b0: int, b1: int) -> tuple[Tensor, Tensor, Callable]:
        """(cotangents, output dimension per cotangent or -1, a function clearing the buffer)."""
        c, b = stop - start, b1 - b0
        idx = torch.arange(start, stop)
        rows = torch.arange(c)
        kind, draws, cot_t = self.phi.kind, self.phi.draws, self.c_out_t
        k_out, p_out = self.k_out, self.p_out
        if kind == "exact":
            t, i = idx // k_out, idx % k_out
            buf = self._zeros(c, b)
            if cot_t is None:
                buf[rows, :, t, i] = 1.0
                return buf, i, lambda: buf.__setitem__((rows, slice(None), t, i), 0.0)
            buf[rows, :, t, :] = cot_t[i].unsqueeze(1)
            return buf, i, lambda: buf.__setitem__((rows, slice(None), t), 0.0)
        if kind == "pos":
            r, i = idx // k_out, idx % k_out
            signs = self._signs(draws[r, i, b0:b1])  # (c, b, p_out)
            if cot_t is None:
                buf = self._zeros(c, b)
                buf[rows, :, :, i] = signs
                return buf, i, lambda: buf.__setitem__((rows, slice(None), slice(None), i), 0.0)
            return signs.unsqueeze(-1) * cot_t[i][:, None, None, :], i, _nothing
        minus = torch.full((c,), -1)
        if kind == "hidden":
            r, t = idx // p_out, idx % p_out
            signs = self._signs(draws[r, t, b0:b1])  # (c, b, k_out)
            vals = signs if cot_t is None else signs @ cot_t
            buf = self._zeros(c, b)
            buf[rows, :, t, :] = vals
            return buf, minus, lambda: buf.__setitem__((rows, slice(None), t), 0.0)
        signs = self._signs(draws[start:stop, b0:b1])  # (c, b, p_out, k_out)
        return (signs if cot_t is None else signs @ cot_t), minus, _nothing


def _nothing() -> None:
    return None


def _reverse_sweeps(
    section: Callable[[Tensor], Tensor],
    x: Tensor,
    cots: _Cotangents,
    points: _Points,
    chunk_bytes: int,
    extra_bytes_per_cot: int = 0,
):
    """Yield ``(b0, b1, out_index, rows)`` with ``rows = Σ_α w_α ∂F/∂g|_{αx}ᵀ cot``.

    ``rows`` has shape (c, b, p_in, d_in) for the samples ``b0:b1`` of ``x``.
    """
    batch, p_in, d_in = x.shape
    unit = points.n * x.element_size() * (
        max(p_in * d_in, cots.p_out * cots.d_out) + extra_bytes_per_cot
    )
    n_cot = cots.n_cot
    dirs, sub = _plan(n_cot, batch, unit, chunk_bytes)
    for b0, b1 in _split(batch, sub):
        _, pull = torch.func.vjp(section, points.stack(x[b0:b1]))
        pull_batched = torch.func.vmap(lambda cot, pull=pull: pull(cot)[0])
        for start, stop in _split(n_cot, dirs):
            cot, out_index, clear = cots.chunk(start, stop, b0, b1)
            rows = points.reduce(pull_batched(points.replicate(cot, weighted=True)), False)
            yield b0, b1, out_index, rows
            clear()


# --- forward mode: chunks of tangents --------------------------------------------------------


def _forward_sweeps(
    section: Callable[[Tensor], Tensor],
    x: Tensor,
    tangents: Callable[[int, int, int, int], Tensor],
    n_tan: int,
    points: _Points,
    dirs: int,
    sub: int,
):
    """Yield ``(b0, b1, start, stop, out)`` with ``out = Σ_α w_α ∂F/∂g|_{αx} · tangent``.

    Samples go in sub-batches of ``sub``, tangents in chunks of ``dirs``.
    ``tangents(start, stop, b0, b1)`` gives the (c, b, p_in, d_in) tangents; ``out`` has
    shape (c, b, p_out, d_out) (raw section outputs).
    """
    for b0, b1 in _split(x.shape[0], sub):
        primal = points.stack(x[b0:b1])

        def push(t: Tensor, primal: Tensor = primal) -> Tensor:
            return torch.func.jvp(section, (primal,), (t,))[1]

        push_batched = torch.func.vmap(push)
        for start, stop in _split(n_tan, dirs):
            tan = points.replicate(tangents(start, stop, b0, b1), weighted=False)
            yield b0, b1, start, stop, points.reduce(push_batched(tan), weighted=True)


def _contract_sources(out: Tensor, phi: _Phi, b0: int, b1: int) -> Tensor:
    """``(c, b, p_out, k_out)`` outputs -> ``(c, b, n_cot)``: each cotangent applied."""
    kind, draws = phi.kind, phi.draws
    if kind == "exact":
        return out.reshape(out.shape[0], out.shape[1], -1)
    signs = _signs(draws[:, :, b0:b1] if kind != "both" else draws[:, b0:b1], out.dtype, out.device)
    if kind == "pos":  # (r, i, b, t)
        z = torch.einsum("cbti,ribt->cbri", out, signs)
    elif kind == "hidden":  # (r, t, b, i)
        z = torch.einsum("cbti,rtbi->cbrt", out, signs)
    else:  # (q, b, t, i)
        z = torch.einsum("cbti,qbti->cbq", out, signs)
    return z.reshape(out.shape[0], out.shape[1], -1)


# --- M′ --------------------------------------------------------------------------------------


def compute_m_dash_sum(
    section: Callable[[Tensor], Tensor],
    acts: Float[Tensor, "batch pos_in d_in"],
    c_out: Float[Tensor, "d_out k_out"] | None,
    *,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    generator: torch.Generator | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    mode: Mode | None = None,
) -> Float[Tensor, "d_in d_in"]:
    """``Σ_x Σ_{t,i} Σ_s J̄_{t,i;s,:}^T J̄_{t,i;s,:}`` for one batch (float64).

    ``J̄`` is the integrated Jacobian of ``section(g) @ c_out`` at ``g = α · acts``. With
    stochastic sources the sum runs over sources instead and is divided by their count.
    Divide the result by ``N · P_in`` (summed over batches) to get ``M′``. ``mode`` picks
    reverse mode (one VJP per output coordinate or source), forward mode (one JVP per input
    coordinate) or, by default, the cheaper.
    """
    batch, p_in, d_in = acts.shape
    x1 = acts[:1]
    p_out, d_out = _out_shape(section, x1)
    k_out = d_out if c_out is None else c_out.shape[1]
    phi = _draw_sources(sources, batch, p_out, k_out, generator)
    n_cot = phi.n_cot if phi.kind != "exact" else p_out * k_out
    n_tan = p_in * d_in
    accumulate = d_in * d_in * p_in
    c_out_macs = 0 if c_out is None else p_out * d_out * k_out
    chosen = _choose(
        DEFAULT_MODE if mode is None else mode,
        section,
        x1,
        reverse_cost=lambda f: n_cot * (f + accumulate + p_out * d_out),
        forward_cost=lambda f: n_tan * (f + c_out_macs + n_cot) + n_cot * accumulate,
    )
    m_dash = torch.zeros(d_in, d_in, dtype=torch.float64, device=acts.device)
    if chosen == "reverse":
        cots = _Cotangents(phi, p_out, k_out, c_out, acts.dtype, acts.device)
        for _, _, _, rows in _reverse_sweeps(section, acts, cots, _Points(*integration.points()),
                                             chunk_bytes):
            flat = rows.reshape(-1, d_in).to(torch.float64)
            m_dash.addmm_(flat.T, flat)
    else:
        _m_dash_forward(section, acts, c_out, phi, integration, chunk_bytes, m_dash)
    return m_dash * _source_scale(sources)


def _m_dash_forward(section, acts, c_out, phi, integration, chunk_bytes, m_dash) -> None:
    """M′ from one-hot input tangents, one input position at a time."""
    batch, p_in, d_in = acts.shape
    points = _Points(*integration.points())
    p_out, d_out = _out_shape(section, acts[:1])
    k_out = d_out if c_out is None else c_out.shape[1]
    n_rows = phi.n_cot if phi.kind != "exact" else p_out * k_out
    unit = acts.element_size() * points.n * max(p_in * d_in, p_out * d_out, n_rows)
    # Columns of one position's Jacobian (d_in, sub-batch, rows); M′ needs all of them at once.
    dirs, sub = _plan(d_in, batch, unit, chunk_bytes)
    for b0, b1 in _split(batch, sub):
        x = acts[b0:b1]
        for s in range(p_in):

            def tangents(start, stop, t0, t1, s=s):
                tan = x.new_zeros(stop - start, t1 - t0, p_in, d_in)
                tan[torch.arange(stop - start), :, s, torch.arange(start, stop)] = 1.0
                return tan

            cols = None
            for _, _, start, stop, out in _forward_sweeps(
                section, x, tangents, d_in, points, dirs, b1 - b0
            ):
                if c_out is not None:
                    out = out @ c_out
                z = _contract_sources(out, phi, b0, b1).to(torch.float64)
                if cols is None:
                    cols = z.new_empty(d_in, *z.shape[1:])
                cols[start:stop] = z
            flat = cols.reshape(d_in, -1)
            m_dash.addmm_(flat, flat.T)


# --- edges -----------------------------------------------------------------------------------


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
    mode: Mode | None = None,
) -> Float[Tensor, "k_out k_in"]:
    """``Σ_x Σ_t A_{t,i,j}(x)²`` for one batch (lib_spec A.6, ``squared``), in float64.

    ``A_{t,i,j} = Σ_α w_α Σ_s ∂F̂_{t,i}/∂g_{s,j}|_{g=α f̂} · f̂_{s,j}`` with
    ``F̂(f̂) = section(f̂ C⁺_in) C_out``. Divide by ``N · P_in`` to get ``E``. Reverse mode takes
    one VJP per output coordinate (or source); forward mode one JVP per input feature ``j``,
    whose tangent ``f̂_{:,j} C⁺_{j,:}`` gives ``A_{:,:,j}`` directly.
    """
    if sources.n_hidden is not None:
        raise ValueError("Edges support stochastic sources over positions only (n_hidden: null).")
    batch, p_in, d_in = acts.shape
    k_in = c_in.shape[1]
    feats = acts @ c_in
    recon = feats @ c_in_pinv
    x1 = recon[:1]
    p_out, d_out = _out_shape(section, x1)
    k_out = d_out if c_out is None else c_out.shape[1]
    phi = _draw_sources(sources, batch, p_out, k_out, generator)
    n_cot = phi.n_cot if phi.kind != "exact" else p_out * k_out
    c_out_macs = 0 if c_out is None else p_out * d_out * k_out
    chosen = _choose(
        DEFAULT_MODE if mode is None else mode,
        section,
        x1,
        reverse_cost=lambda f: n_cot * (f + p_in * d_in * k_in + p_out * d_out),
        forward_cost=lambda f: k_in * (f + c_out_macs + n_cot + p_in * d_in),
    )
    edges = torch.zeros(k_out, k_in, dtype=torch.float64, device=acts.device)
    points = _Points(*integration.points())
    if chosen == "reverse":
        cots = _Cotangents(phi, p_out, k_out, c_out, acts.dtype, acts.device)
        pinv_t = c_in_pinv.T.contiguous()
        for b0, b1, out_index, rows in _reverse_sweeps(
            section, recon, cots, points, chunk_bytes, extra_bytes_per_cot=p_in * k_in
        ):
            grads = rows @ pinv_t  # (chunk, b, pos_in, k_in)
            attributions = (grads * feats[b0:b1]).sum(dim=2).to(torch.float64)
            edges.index_add_(0, out_index.to(acts.device), attributions.square().sum(dim=1))
    else:
        feats_t = feats.permute(2, 0, 1)  # (k_in, batch, pos_in)

        def tangents(start, stop, b0, b1):
            return feats_t[start:stop, b0:b1, :, None] * c_in_pinv[start:stop, None, None, :]

        unit = acts.element_size() * points.n * max(p_in * d_in, p_out * d_out)
        dirs, sub = _plan(k_in, batch, unit, chunk_bytes)
        for b0, b1, start, stop, out in _forward_sweeps(
            section, recon, tangents, k_in, points, dirs, sub
        ):
            if c_out is not None:
                out = out @ c_out  # A: (chunk of j, b, p_out, k_out)
            if phi.kind == "exact":
                sq = out.to(torch.float64).square().sum(dim=(1, 2))
            else:
                a = torch.einsum("cbti,ribt->cbri", out, _signs(
                    phi.draws[:, :, b0:b1], out.dtype, out.device))
                sq = a.to(torch.float64).square().sum(dim=(1, 2))
            edges[:, start:stop] += sq.T
    return edges * _source_scale(sources)
