"""Batched Jacobian contractions: M′ (method §A.3 step 3) and squared edges (A.6).

Both are sums over (sample, output coordinate) of Jacobian products. There is no Python loop
over output coordinates or samples: one ``torch.func`` call takes the Jacobian of a sub-batch of
samples along a chunk of directions (method §F.4), ``vmap``-ed twice:

- the outer ``vmap`` runs over samples, the inner one over directions. Directions that are the
  same for every sample (one-hot cotangents, one-hot or ``C⁺`` tangents) stay unbatched over
  samples, so the sample-independent end of a backward pass (``C_out``, output projections) or
  start of a forward pass (input projections) is computed once per direction, not per sample;
  a section that is linear costs one Jacobian in all. Sections that cannot be ``vmap``-ed over
  samples fall back to one batched ``vjp``/``jvp`` per sub-batch.
- reverse mode takes one VJP per output coordinate (or stochastic source); forward mode one JVP
  per input coordinate (M′) or per input feature (edges: the tangent ``C⁺_{j,:}``, weighted by
  ``f̂_{s,j}`` afterwards, gives ``A_{:,:,j}`` without contracting gradients with ``C⁺``).
  The mode whose counted cost (multiply-adds + weighted elementwise work + per-op overhead,
  measured on one or two samples and directions, extrapolated bilinearly) is lower is used;
  the choice is cached per section and shapes.

A section that knows its Jacobian's structure can skip all of this: one implementing
:class:`ClosedForm` (the mod-add, MLP and language-model sections,
:mod:`interaction_basis.lib.closed_form`) contracts M′ and the edges itself under
``mode="auto"`` with exact sources, and with the kinds of stochastic sources it lists (given
the same draws); the explicit modes always use autograd (the tests compare the two).

Samples go in sub-batches and directions in chunks sized to keep the working set in cache;
integration points are stacked along the sample axis so that one call serves all of them. The
bytes a call allocates, every intermediate of the section included (the input rows ``d_in`` wide,
the tangents of attention's ``(H, P, P)`` patterns), are measured like the cost, on calls of 1-2
samples and directions, and samples and directions are cut further until a call's bytes stay
within the memory budget (:func:`~interaction_basis.lib.budget.budget_bytes`; one direction of
one sample at least). Auto mode skips a strategy whose smallest call would exceed it.
Results are *sums*; divide by the number of (sample, input position) pairs to normalise, after
adding batches or shards.
"""

import weakref
from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol, cast, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from interaction_basis.lib.budget import budget_bytes

IntegrationMethod = Literal["gradient", "trapezoidal", "gauss-legendre"]
Mode = Literal["auto", "forward", "reverse"]
Section = Callable[[Tensor], Tensor]

#: Bytes of per-call Jacobian rows (samples × directions × the larger of the section's input and
#: output): keeps the working set in cache. The job's working memory is bounded separately, by
#: the budget (``lib.budget``) against the measured bytes of a call.
DEFAULT_CHUNK_BYTES = 4 * 2**20

#: Directions per call at least, whatever ``chunk_bytes`` (each call runs a forward pass).
MIN_DIRECTIONS = 16

#: The mode used when a call does not name one ("auto": the cheaper by the cost model).
DEFAULT_MODE: Mode = "auto"

#: Cost model: one element written by a memory-bound op costs this many multiply-adds, and one
#: dispatched op this many (Python and dispatcher overhead).
_ELEMENT_COST = 8.0
_OP_COST = 2e5


@runtime_checkable
class ClosedForm(Protocol):
    """A section that contracts its own integrated Jacobians in closed form (exact sources).

    ``points`` are the integration rule's α values and weights. Results are float64 sums over
    the batch, as :func:`compute_m_dash_sum` and :func:`compute_edges_sum` return them. A
    closed form whose ``takes_sources`` attribute lists kinds of stochastic sources ("pos",
    "hidden", "both") also serves those: it then gets a fifth (sixth for edges) argument, the
    :class:`SourceDraws` the generic path would use, and returns the sum over sources before
    dividing by their count.
    """

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: tuple[list[float], list[float]],
    ) -> Float[Tensor, "d_in d_in"]: ...

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos_in d_in"],
        feats: Float[Tensor, "batch pos_in k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: tuple[list[float], list[float]],
    ) -> Float[Tensor, "k_out k_in"]:
        """``recon = feats @ c_in_pinv``: the activations rebuilt from the features."""


class Integration(NamedTuple):
    """An integration rule over the path ``α f``, α ∈ [0, 1] (method §A.7)."""

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


def _closed_form(section: Section, mode: Mode | None, sources: Sources) -> ClosedForm | None:
    """The section's closed form where it applies: ``auto`` mode, and exact sources or a kind
    of stochastic sources the section lists in ``takes_sources``. Closed forms chunk within
    the memory budget themselves (``lib.budget``), so the size of the input never matters."""
    if (mode or DEFAULT_MODE) != "auto" or not isinstance(section, ClosedForm):
        return None
    if sources.n_pos is None and sources.n_hidden is None:
        kind = "exact"
    elif sources.n_hidden is None:
        kind = "pos"
    else:
        kind = "hidden" if sources.n_pos is None else "both"
    return section if kind == "exact" or kind in getattr(section, "takes_sources", ()) else None


# --- stochastic sources ----------------------------------------------------------------------


class SourceDraws(NamedTuple):
    """The ±1 draws of one batch as booleans (True: +1), in the generator order of one
    cotangent per source. ``draws``: ``pos`` (n_pos, k_out, batch, p_out); ``hidden``
    (n_hidden, p_out, batch, k_out); ``both`` (n_pos · n_hidden, batch, p_out, k_out).

    ``shared`` (``pos`` only): every output dimension shares its source's draw, as the edges
    draw them (method §A.6); ``draws`` is then a view expanded from (n_pos, 1, batch, p_out).
    """

    kind: Literal["exact", "pos", "hidden", "both"]
    draws: Tensor | None
    shared: bool = False

    def edge_signs(self) -> Tensor:
        """The edges' draws, one row per source for all output features: booleans
        (n_pos, 1, batch, p_out)."""
        if self.kind != "pos" or not self.shared or self.draws is None:
            raise ValueError(
                "Edges take stochastic sources over positions, one draw per source shared by "
                f"the output features (method §A.6); got {self.kind!r} draws"
                f"{'' if self.shared else ' per output feature'}."
            )
        return self.draws[:, :1]


class _TakesSources(Protocol):
    """A :class:`ClosedForm` that lists kinds of stochastic sources in ``takes_sources``: its
    sums also take the :class:`SourceDraws`."""

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: tuple[list[float], list[float]],
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "d_in d_in"]: ...

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos_in d_in"],
        feats: Float[Tensor, "batch pos_in k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: tuple[list[float], list[float]],
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "k_out k_in"]: ...


def _draw_sources(
    sources: Sources,
    batch: int,
    p_out: int,
    k_out: int,
    generator: torch.Generator | None,
    shared: bool = False,
) -> SourceDraws:
    """The draws of one batch; ``shared``: one draw per position source for all output
    dimensions (the edges, method §A.6), else one per output dimension (M′, §A.3)."""
    n_pos, n_hid = sources.n_pos, sources.n_hidden

    def draw(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator) > 0.5

    if n_hid is None:
        if n_pos is None:
            return SourceDraws("exact", None)
        if shared:  # one sign per (source, sample, output position)
            signs = draw(n_pos, batch, p_out)[:, None].expand(n_pos, k_out, batch, p_out)
            return SourceDraws("pos", signs, shared=True)
        # one sign per (source, output dim, sample, output position)
        return SourceDraws(
            "pos", draw(n_pos * k_out, batch, p_out).view(n_pos, k_out, batch, p_out)
        )
    if n_pos is None:  # one sign per (source, output position, sample, output dim)
        return SourceDraws(
            "hidden", draw(n_hid * p_out, batch, k_out).view(n_hid, p_out, batch, k_out)
        )
    return SourceDraws("both", draw(n_pos * n_hid, batch, p_out, k_out))


def _signs(draws: Tensor, like: Tensor) -> Tensor:
    return (draws.to(like.dtype) * 2 - 1).to(like.device)


def _source_scale(sources: Sources) -> float:
    return 1.0 / ((sources.n_pos or 1) * (sources.n_hidden or 1))


def _n_cotangents(phi: SourceDraws, p_out: int, k_out: int) -> int:
    if phi.kind == "exact":
        return p_out * k_out
    assert phi.draws is not None  # drawn for every stochastic kind
    return phi.draws.shape[0] * (1 if phi.kind == "both" else phi.draws.shape[1])


def _apply_sources(out: Tensor, phi: SourceDraws, b0: int, b1: int) -> Tensor:
    """``(b, c, p_out, k_out)`` outputs -> ``(b, c, n_cot)``: every cotangent applied."""
    if phi.kind == "exact":
        return out.reshape(*out.shape[:2], -1)
    d = phi.draws
    assert d is not None  # drawn for every stochastic kind
    if phi.kind == "pos":  # (r, i, b, t)
        z = torch.einsum("bcti,ribt->bcri", out, _signs(d[:, :, b0:b1], out))
    elif phi.kind == "hidden":  # (r, t, b, i)
        z = torch.einsum("bcti,rtbi->bcrt", out, _signs(d[:, :, b0:b1], out))
    else:  # (q, b, t, i)
        z = torch.einsum("bcti,qbti->bcq", out, _signs(d[:, b0:b1], out))
    return z.reshape(*out.shape[:2], -1)


# --- integration points and the batched transforms -------------------------------------------


class _Points(NamedTuple):
    alphas: list[float]
    weights: list[float]

    @property
    def n(self) -> int:
        return len(self.alphas)

    def stack(self, x: Tensor) -> Tensor:
        """``[α_0 x; α_1 x; …]`` along the samples: one call serves every integration point.

        Always a fresh tensor: forward-mode AD on a view of a larger batch would allocate (and
        zero) a tangent for the whole base tensor at every call.
        """
        if self.alphas == [1.0]:
            return x.clone()
        return torch.cat([x * a for a in self.alphas])

    def repeat(self, v: Tensor) -> Tensor:
        """Per-sample directions ``(b, …)`` -> ``(n·b, …)``, matching :meth:`stack`."""
        return v if self.n == 1 else v.repeat(self.n, *([1] * (v.ndim - 1)))

    def reduce(self, v: Tensor) -> Tensor:
        """``(n·b, …)`` -> ``(b, …)``: the weighted sum over integration points.

        A result broadcast over samples (stride 0) stays broadcast.
        """
        if self.n == 1:
            return v if self.weights[0] == 1.0 else v * self.weights[0]
        v = v.view(self.n, v.shape[0] // self.n, *v.shape[1:])
        w = torch.tensor(self.weights, dtype=v.dtype, device=v.device)
        if v.stride(1) == 0 and v.shape[1] > 1:
            return torch.einsum("a...,a->...", v[:, :1], w).expand(v.shape[1:])
        return torch.einsum("a...,a->...", v, w)


def _per_sample(section: Section) -> Section:
    return lambda g: section(g.unsqueeze(0)).squeeze(0)


def _pullback(section: Section, xs: Tensor, cots: Tensor, per_sample: bool, nested: bool) -> Tensor:
    """Rows ``(B, c, p_in, d_in)`` of ``cotᵀ ∂section/∂x`` at every sample of ``xs``.

    ``cots`` is ``(B, c, p_out, d_out)`` if ``per_sample`` else ``(c, p_out, d_out)``.
    """
    if nested:
        fn = _per_sample(section)

        def one(x1: Tensor, ct: Tensor) -> Tensor:
            pull = torch.func.vjp(fn, x1)[1]
            return torch.func.vmap(lambda c: pull(c)[0])(ct)

        return torch.func.vmap(one, in_dims=(0, 0 if per_sample else None))(xs, cots)
    pull = torch.func.vjp(section, xs)[1]
    if per_sample:
        flat = cots.transpose(0, 1)
    else:
        flat = cots.unsqueeze(1).expand(cots.shape[0], xs.shape[0], *cots.shape[1:])
    return torch.func.vmap(lambda c: pull(c)[0])(flat.contiguous()).transpose(0, 1)


def _pushforward(
    section: Section, xs: Tensor, tans: Tensor, per_sample: bool, nested: bool
) -> Tensor:
    """Outputs ``(B, c, p_out, d_out)`` of ``∂section/∂x · tan`` at every sample of ``xs``."""
    if nested:
        fn = _per_sample(section)

        def one(x1: Tensor, tn: Tensor) -> Tensor:
            return torch.func.vmap(lambda t: torch.func.jvp(fn, (x1,), (t,))[1])(tn)

        return torch.func.vmap(one, in_dims=(0, 0 if per_sample else None))(xs, tans)
    if per_sample:
        flat = tans.transpose(0, 1)
    else:
        flat = tans.unsqueeze(1).expand(tans.shape[0], xs.shape[0], *tans.shape[1:])

    def push(t: Tensor) -> Tensor:
        return torch.func.jvp(section, (xs,), (t,))[1]

    return torch.func.vmap(push)(flat.contiguous()).transpose(0, 1)


def _accumulate_gram(target: Tensor, rows: Tensor) -> None:
    """``target += Σ rowsᵀ rows`` over every leading index of ``rows`` (..., d), in float64."""
    d = rows.shape[-1]
    if rows.ndim > 2 and rows.shape[0] > 1 and rows.stride(0) == 0:  # the same for all samples
        flat = rows[0].reshape(-1, d).to(torch.float64)
        target.addmm_(flat.T, flat, alpha=rows.shape[0])
    else:
        flat = rows.reshape(-1, d).to(torch.float64)
        target.addmm_(flat.T, flat)


def _apply_c_out(out: Tensor, c_out: Tensor | None) -> Tensor:
    if c_out is None:
        return out
    if out.shape[0] > 1 and out.stride(0) == 0:
        return (out[:1] @ c_out).expand(out.shape[0], *out.shape[1:-1], c_out.shape[1])
    return out @ c_out


# --- strategies, chunking and the cost model -------------------------------------------------


class _Strategy(NamedTuple):
    """One way to compute a result: ``run(b0, b1, start, stop, acc)`` adds the contribution of
    samples ``b0:b1`` and direction units ``start:stop`` to ``acc``."""

    name: str
    n_units: int
    bytes_per_unit_sample: int
    run: Callable[[int, int, int, int, Tensor], None]
    directions_per_unit: int = 1


def _split(n: int, size: int) -> list[tuple[int, int]]:
    """``range(n)`` in ``ceil(n / size)`` near-equal contiguous pieces."""
    size = max(1, min(size, n))
    pieces = -(-n // size)
    bounds = [round(i * n / pieces) for i in range(pieces + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class _Bilinear(NamedTuple):
    """``fixed + per_b·b + per_u·u + per_bu·b·u``: a quantity of one call on ``b`` samples and
    ``u`` units, fitted to calls on 1-2 samples and units."""

    fixed: float
    per_b: float
    per_u: float
    per_bu: float

    def __call__(self, b: int, u: int) -> float:
        return self.fixed + self.per_b * b + self.per_u * u + self.per_bu * b * u

    @classmethod
    def fit(
        cls, f11: float, f21: float | None, f12: float | None, f22: float | None
    ) -> "_Bilinear":
        """From the values at (1, 1), (2, 1), (1, 2), (2, 2); ``None`` where that size does
        not exist (one sample, one unit)."""
        per_b = 0.0 if f21 is None else f21 - f11
        per_u = 0.0 if f12 is None else f12 - f11
        per_bu = 0.0 if f22 is None or f21 is None or f12 is None else f22 - f21 - f12 + f11
        return cls(f11 - per_b - per_u - per_bu, per_b, per_u, per_bu)


class _Probe(NamedTuple):
    """A strategy's measured cost (multiply-adds and weighted elementwise work) and the bytes
    that one call allocates, as functions of the call's samples and units."""

    cost: _Bilinear
    bytes: _Bilinear


def _plan(
    strategy: _Strategy, batch: int, chunk_bytes: int, memory: _Bilinear | None = None
) -> tuple[int, int]:
    """(units per call, samples per call): every unit of a few samples if that fits.

    ``chunk_bytes`` sizes the rows of a call for the cache. Every call re-runs the section's
    forward pass on its samples, so it takes at least ``MIN_DIRECTIONS`` directions even where
    that exceeds ``chunk_bytes``. ``memory`` (the bytes one call allocates, every intermediate
    of the section included) then caps samples and units so that a call stays within
    :func:`~interaction_basis.lib.budget.budget_bytes`: one unit of one sample at least.
    """
    unit = max(1, strategy.bytes_per_unit_sample)
    sub = max(1, min(batch, chunk_bytes // (unit * strategy.n_units)))
    min_units = -(-MIN_DIRECTIONS // strategy.directions_per_unit)
    units = max(min_units, chunk_bytes // (unit * sub))
    units = max(1, min(strategy.n_units, units))
    if memory is not None:
        limit = budget_bytes()
        while sub > 1 and memory(sub, units) > limit:
            sub = (sub + 1) // 2
        while units > 1 and memory(sub, units) > limit:
            units = (units + 1) // 2
    return units, sub


def _execute(strategy: _Strategy, batch: int, chunk_bytes: int, acc: Tensor, probe: _Probe) -> None:
    units, sub = _plan(strategy, batch, chunk_bytes, probe.bytes)
    for b0, b1 in _split(batch, sub):
        for start, stop in _split(strategy.n_units, units):
            strategy.run(b0, b1, start, stop, acc)


class _CostMode(TorchDispatchMode):
    """Counts multiply-adds of matmul-like ops, elements written by other ops, and ops; and
    the bytes of every tensor an op allocates (an output that shares no input's storage),
    whose total bounds a call's peak working set from above."""

    def __init__(self) -> None:
        super().__init__()
        self.cost = 0.0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.cost += _OP_COST
        inputs = {_storage(a) for a in torch.utils._pytree.tree_leaves((args, kwargs))}
        written = 0
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, Tensor) and (_storage(o) is None or _storage(o) not in inputs):
                written += o.numel()
                self.bytes += o.numel() * o.element_size()
        packet = func._overloadpacket
        if packet in flop_registry:
            self.cost += flop_registry[packet](*args, **kwargs, out_val=out) / 2
        else:
            self.cost += _ELEMENT_COST * written
        return out


def _storage(t: object) -> int | None:
    """The address of a tensor's storage (views share it); ``None`` if there is none."""
    if not isinstance(t, Tensor):
        return None
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return None


def _measure(strategy: _Strategy, b: int, units: int, acc: Tensor) -> tuple[float, int]:
    with _CostMode() as mode:
        strategy.run(0, b, 0, units, acc.clone())
    return mode.cost, mode.bytes


def _probe(section: Section, key: tuple, strategy: _Strategy, batch: int, acc: Tensor) -> _Probe:
    """Cost and bytes of a call, measured on calls of 1-2 samples and units (cached per
    section, problem and strategy)."""
    cache = _section_cache(section)
    full_key = ("probe", *key, strategy.name)
    if full_key not in cache:
        b2, u2 = min(2, batch), min(2, strategy.n_units)
        f11 = _measure(strategy, 1, 1, acc)
        f21 = _measure(strategy, b2, 1, acc) if b2 > 1 else None
        f12 = _measure(strategy, 1, u2, acc) if u2 > 1 else None
        f22 = _measure(strategy, b2, u2, acc) if b2 > 1 and u2 > 1 else None
        cache[full_key] = _Probe(
            *(
                _Bilinear.fit(
                    float(f11[i]), *(None if f is None else float(f[i]) for f in (f21, f12, f22))
                )
                for i in (0, 1)
            )
        )
    return cache[full_key]


def _estimate(strategy: _Strategy, batch: int, chunk_bytes: int, probe: _Probe) -> float:
    """Cost of :func:`_execute`, extrapolated bilinearly from the probe's calls."""
    units, sub = _plan(strategy, batch, chunk_bytes, probe.bytes)
    total = 0.0
    for b0, b1 in _split(batch, sub):
        for start, stop in _split(strategy.n_units, units):
            total += probe.cost(b1 - b0, stop - start)
    return total


#: Per section: ``{signature: (nestable, {problem key: chosen strategy name})}``.
_CACHE: "weakref.WeakKeyDictionary[Section, dict]" = weakref.WeakKeyDictionary()


def _section_cache(section: Section) -> dict:
    try:
        return _CACHE.setdefault(section, {})
    except TypeError:  # not weak-referenceable: no caching
        return {}


def _nestable(section: Section, x: Tensor) -> bool:
    """Whether ``section`` can be ``vmap``-ed over samples (and gives the same result)."""
    cache = _section_cache(section)
    key = ("nestable", tuple(x.shape[1:]), x.dtype, x.device)
    if key not in cache:
        xs = x[: min(2, x.shape[0])]
        try:
            with torch.no_grad():
                got = torch.func.vmap(_per_sample(section))(xs)
                want = section(xs)
            cache[key] = bool(got.shape == want.shape and torch.allclose(got, want))
        except Exception:  # noqa: BLE001 - any failure means "not vmap-able over samples"
            cache[key] = False
    return cache[key]


def _forward_ad_ok(section: Section, x1: Tensor) -> bool:
    """Whether every op of ``section`` has a forward-mode derivative (cached)."""
    cache = _section_cache(section)
    key = ("forward_ad", tuple(x1.shape[1:]), x1.dtype, x1.device)
    if key not in cache:
        try:
            torch.func.jvp(section, (x1,), (torch.zeros_like(x1),))
            cache[key] = True
        except (NotImplementedError, RuntimeError):
            cache[key] = False
    return cache[key]


def _choose(
    section: Section,
    mode: Mode,
    key: tuple,
    candidates: dict[str, _Strategy],
    batch: int,
    chunk_bytes: int,
    acc: Tensor,
    x1: Tensor,
) -> tuple[_Strategy, _Probe]:
    """The requested strategy, or under "auto" the cheapest by :func:`_estimate` among those
    whose smallest call (one unit of one sample) fits the memory budget (all, if none does);
    with its probe (cached)."""
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"Unknown Jacobian mode {mode!r}; use auto, forward or reverse.")
    reverse = {n: s for n, s in candidates.items() if n.startswith("reverse")}
    forward = {n: s for n, s in candidates.items() if n.startswith("forward")}
    if mode == "reverse" or not forward or not _forward_ad_ok(section, x1):
        pool = reverse
    elif mode == "forward":
        pool = forward
    else:
        pool = candidates
    probes = {n: _probe(section, key, s, batch, acc) for n, s in pool.items()}
    if len(pool) == 1:
        name = next(iter(pool))
        return pool[name], probes[name]
    cache = _section_cache(section)
    full_key = (mode, *key, tuple(sorted(pool)), budget_bytes())
    if full_key not in cache:
        fitting = [n for n in pool if probes[n].bytes(1, 1) <= budget_bytes()] or list(pool)
        costs = {n: _estimate(pool[n], batch, chunk_bytes, probes[n]) for n in fitting}
        cache[full_key] = min(costs, key=costs.__getitem__)
    return pool[cache[full_key]], probes[cache[full_key]]


# --- cotangents -------------------------------------------------------------------------------


def _cotangents(
    phi: SourceDraws,
    start: int,
    stop: int,
    b0: int,
    b1: int,
    p_out: int,
    k_out: int,
    c_out_t: Tensor | None,
    like: Tensor,
) -> tuple[Tensor, Tensor, bool]:
    """Cotangents of the raw section output for directions ``start:stop`` and samples
    ``b0:b1``: ``(cots, output dimension per cotangent or -1, per_sample)``.

    ``C_out`` is applied to the cotangents directly (a one-hot cotangent of ``F C_out`` is a
    column of ``C_out`` for ``F``) instead of through autograd. Exact cotangents are the same
    for every sample: ``(c, p_out, d_out)``; stochastic ones are ``(b, c, p_out, d_out)``.
    """
    c, b = stop - start, b1 - b0
    idx = torch.arange(start, stop)
    rows = torch.arange(c)
    d_out = k_out if c_out_t is None else c_out_t.shape[1]
    minus = torch.full((c,), -1)
    draws = phi.draws
    if phi.kind == "exact":
        t, i = idx // k_out, idx % k_out
        cots = like.new_zeros(c, p_out, d_out)
        if c_out_t is None:
            cots[rows, t, i] = 1.0
        else:
            cots[rows, t] = c_out_t[i]
        return cots, i, False
    assert draws is not None  # drawn for every stochastic kind
    if phi.kind == "pos":
        r, i = idx // k_out, idx % k_out
        signs = _signs(draws[r, i, b0:b1], like).transpose(0, 1)  # (b, c, p_out)
        if c_out_t is None:
            cots = like.new_zeros(b, c, p_out, d_out)
            cots[:, rows, :, i] = signs.permute(1, 0, 2)
            return cots, i, True
        return signs.unsqueeze(-1) * c_out_t[i][None, :, None, :], i, True
    if phi.kind == "hidden":
        r, t = idx // p_out, idx % p_out
        signs = _signs(draws[r, t, b0:b1], like)  # (c, b, k_out)
        vals = signs if c_out_t is None else signs @ c_out_t
        cots = like.new_zeros(b, c, p_out, d_out)
        cots[:, rows, t] = vals.transpose(0, 1)
        return cots, minus, True
    signs = _signs(draws[start:stop, b0:b1], like)  # (c, b, p_out, k_out)
    vals = signs if c_out_t is None else signs @ c_out_t
    return vals.transpose(0, 1), minus, True


def _out_shape(section: Section, x1: Tensor) -> tuple[int, int]:
    with torch.no_grad():
        out = section(x1)
    if out.ndim != 3 or out.shape[0] != 1:
        raise ValueError(
            f"A section must map (batch, pos, d) to (batch, pos, d), got {tuple(out.shape)} "
            f"from {tuple(x1.shape)}."
        )
    return int(out.shape[1]), int(out.shape[2])


# --- M′ --------------------------------------------------------------------------------------


def compute_m_dash_sum(
    section: Section,
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
    coordinate) or, by default ("auto"), the section's closed form if it has one
    (:class:`ClosedForm`, exact sources only), else the cheaper of the two.
    """
    closed = _closed_form(section, mode, sources)
    if closed is not None and sources == Sources():
        return closed.compute_m_dash_sum(acts, c_out, integration.points())
    batch, p_in, d_in = acts.shape
    x1 = acts[:1]
    p_out, d_out = _out_shape(section, x1)
    k_out = d_out if c_out is None else c_out.shape[1]
    phi = _draw_sources(sources, batch, p_out, k_out, generator)
    if closed is not None:  # the same draws as autograd would use
        # Stochastic sources get a closed form only if it takes them (``_closed_form``).
        with_draws = cast(_TakesSources, closed)
        m_dash = with_draws.compute_m_dash_sum(acts, c_out, integration.points(), phi)
        return m_dash * _source_scale(sources)
    n_cot = _n_cotangents(phi, p_out, k_out)
    points = _Points(*integration.points())
    nested = _nestable(section, acts)
    c_out_t = None if c_out is None else c_out.T.contiguous()
    item = acts.element_size() * points.n

    def reverse(b0: int, b1: int, start: int, stop: int, acc: Tensor) -> None:
        cots, _, per_sample = _cotangents(phi, start, stop, b0, b1, p_out, k_out, c_out_t, acts)
        xs = points.stack(acts[b0:b1])
        rows = _pullback(
            section, xs, points.repeat(cots) if per_sample else cots, per_sample, nested
        )
        _accumulate_gram(acc, points.reduce(rows))

    def forward(b0: int, b1: int, start: int, stop: int, acc: Tensor) -> None:
        # Units are input positions: every coordinate of positions start:stop, one-hot.
        n_pos = stop - start
        tans = acts.new_zeros(n_pos, d_in, p_in, d_in)
        pos = torch.arange(start, stop)[:, None]
        tans[torch.arange(n_pos)[:, None], torch.arange(d_in), pos, torch.arange(d_in)] = 1.0
        out = _pushforward(
            section, points.stack(acts[b0:b1]), tans.view(-1, p_in, d_in), False, nested
        )
        z = _apply_sources(_apply_c_out(points.reduce(out), c_out), phi, b0, b1)
        # M′_{jj'} += Σ_{b,s,r} z[b,s,j,r] z[b,s,j',r]
        cols = z.view(b1 - b0, n_pos, d_in, -1).permute(2, 0, 1, 3).to(torch.float64)
        flat = cols.reshape(d_in, -1)
        acc.addmm_(flat, flat.T)

    candidates = {
        "reverse": _Strategy("reverse", n_cot, item * max(p_in * d_in, p_out * d_out), reverse),
    }
    # Forward needs one position's whole Jacobian block at once; skip it where that is huge
    # (for the cache) or exceeds the memory budget.
    if d_in * max(n_cot, p_out * d_out) * item <= min(16 * chunk_bytes, budget_bytes()):
        unit = d_in * item * max(p_in * d_in, p_out * d_out, n_cot)
        candidates["forward"] = _Strategy("forward", p_in, unit, forward, d_in)
    m_dash = torch.zeros(d_in, d_in, dtype=torch.float64, device=acts.device)
    key = (
        "m_dash",
        tuple(acts.shape[1:]),
        None if c_out is None else tuple(c_out.shape),
        phi.kind,
        n_cot,
        points.n,
        acts.dtype,
        chunk_bytes,
    )
    strategy, probe = _choose(
        section,
        DEFAULT_MODE if mode is None else mode,
        key,
        candidates,
        batch,
        chunk_bytes,
        m_dash,
        x1,
    )
    _execute(strategy, batch, chunk_bytes, m_dash, probe)
    return m_dash * _source_scale(sources)


# --- edges -----------------------------------------------------------------------------------


def compute_edges_sum(
    section: Section,
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
    """``Σ_x Σ_t A_{t,i,j}(x)²`` for one batch (method §A.6, ``squared``), in float64.

    ``A_{t,i,j} = Σ_α w_α Σ_s ∂F̂_{t,i}/∂g_{s,j}|_{g=α f̂} · f̂_{s,j}`` with
    ``F̂(f̂) = section(f̂ C⁺_in) C_out``. Divide by ``N · P_in`` to get ``E``. Reverse mode takes
    one VJP per output coordinate (or source); forward mode one JVP per input feature ``j``
    (tangent ``f̂_{:,j} C⁺_{j,:}``), or per feature and position (tangent ``C⁺_{j,:}`` at ``s``,
    the same for every sample, weighted by ``f̂_{s,j}`` afterwards); "auto" takes the section's
    closed form where it has one, else the cheapest.
    """
    if sources.n_hidden is not None:
        raise ValueError("Edges support stochastic sources over positions only (n_hidden: null).")
    batch, p_in, d_in = acts.shape
    k_in = c_in.shape[1]
    feats = acts @ c_in
    recon = feats @ c_in_pinv
    closed = _closed_form(section, mode, sources)
    rule_points = integration.points()
    if closed is not None and sources == Sources():
        return closed.compute_edges_sum(recon, feats, c_in_pinv, c_out, rule_points)
    x1 = recon[:1]
    p_out, d_out = _out_shape(section, x1)
    k_out = d_out if c_out is None else c_out.shape[1]
    phi = _draw_sources(sources, batch, p_out, k_out, generator, shared=True)
    if closed is not None:  # the same draws as autograd would use
        # Stochastic sources get a closed form only if it takes them (``_closed_form``).
        with_draws = cast(_TakesSources, closed)
        edges = with_draws.compute_edges_sum(recon, feats, c_in_pinv, c_out, rule_points, phi)
        return edges * _source_scale(sources)
    n_cot = _n_cotangents(phi, p_out, k_out)
    points = _Points(*integration.points())
    nested = _nestable(section, recon)
    c_out_t = None if c_out is None else c_out.T.contiguous()
    pinv_t = c_in_pinv.T.contiguous()
    item = acts.element_size() * points.n

    # The weights C⁺ ∘ f̂ of a reverse call, (s·d, k) per sample, are formed once per call
    # where a sample's copy takes at most a quarter of the budget (the 19 GB of one GPT-2
    # attention sample at 1024 tokens would not).
    share_weights = p_in * d_in * k_in * acts.element_size() * 4 <= budget_bytes()

    def square_sum(a: Tensor, b0: int, b1: int) -> Tensor:
        """``A`` (b, j, p_out, k_out) -> ``Σ_{b,t or r} A²`` as (k_out, j)."""
        if phi.kind == "pos":
            assert phi.draws is not None  # drawn for every stochastic kind
            a = torch.einsum("bjti,ribt->bjri", a, _signs(phi.draws[:, :, b0:b1], a))
        return a.to(torch.float64).square().sum(dim=(0, 2)).T

    def reverse(b0: int, b1: int, start: int, stop: int, acc: Tensor) -> None:
        cots, out_index, per_sample = _cotangents(
            phi, start, stop, b0, b1, p_out, k_out, c_out_t, acts
        )
        xs = points.stack(recon[b0:b1])
        rows = points.reduce(
            _pullback(section, xs, points.repeat(cots) if per_sample else cots, per_sample, nested)
        )  # (b, c, p_in, d_in)
        f = feats[b0:b1]
        if rows.shape[0] > 1 and rows.stride(0) == 0:
            attributions = torch.einsum("cpk,bpk->bck", rows[0] @ pinv_t, f)
        elif not share_weights:
            # One sample's weights would exceed the budget: project each cotangent's rows
            # onto the features first, (b, c, s, k), the same products in another order.
            attributions = torch.einsum("bcpk,bpk->bck", rows @ pinv_t, f)
        else:
            # Σ_{s,d} rows[b,c,s,d] C⁺[k,d] f̂[b,s,k] as one matmul per sample: the weights
            # (b, s·d, k) are formed once per sub-batch, not once per cotangent.
            weights = (pinv_t.unsqueeze(0) * f.unsqueeze(2)).reshape(b1 - b0, p_in * d_in, k_in)
            attributions = torch.bmm(rows.reshape(b1 - b0, -1, p_in * d_in), weights)
        acc.index_add_(
            0, out_index.to(acc.device), attributions.to(torch.float64).square().sum(dim=0)
        )

    def forward_shared(b0: int, b1: int, start: int, stop: int, acc: Tensor) -> None:
        # Units are input features j; tangents C⁺_{j,:} at each position s, one per (j, s).
        n_j = stop - start
        tans = acts.new_zeros(n_j, p_in, p_in, d_in)
        pos = torch.arange(p_in)
        tans[:, pos, pos, :] = c_in_pinv[start:stop, None, :]
        out = _pushforward(
            section, points.stack(recon[b0:b1]), tans.view(-1, p_in, d_in), False, nested
        )
        out = _apply_c_out(points.reduce(out), c_out).view(b1 - b0, n_j, p_in, p_out, k_out)
        a = torch.einsum("bjstk,bsj->bjtk", out, feats[b0:b1, :, start:stop])
        acc[:, start:stop] += square_sum(a, b0, b1)

    def forward_combined(b0: int, b1: int, start: int, stop: int, acc: Tensor) -> None:
        # Units are input features j; per-sample tangents f̂_{:,j} C⁺_{j,:}.
        f = feats[b0:b1, :, start:stop].permute(0, 2, 1)  # (b, j, p_in)
        tans = f.unsqueeze(-1) * c_in_pinv[start:stop, None, :]
        out = _pushforward(section, points.stack(recon[b0:b1]), points.repeat(tans), True, nested)
        acc[:, start:stop] += square_sum(_apply_c_out(points.reduce(out), c_out), b0, b1)

    width = max(p_in * d_in, p_out * d_out)
    candidates = {
        "reverse": _Strategy("reverse", n_cot, item * (width + p_in * k_in), reverse),
    }
    # One unit of forward-shared is a tangent per input position: skip it where that is huge
    # (for the cache) or exceeds the memory budget.
    if p_in * width * item <= min(16 * chunk_bytes, budget_bytes()):
        candidates["forward-shared"] = _Strategy(
            "forward-shared", k_in, item * p_in * width, forward_shared, p_in
        )
    if p_in > 1:
        candidates["forward-combined"] = _Strategy(
            "forward-combined", k_in, item * width, forward_combined
        )
    edges = torch.zeros(k_out, k_in, dtype=torch.float64, device=acts.device)
    key = (
        "edges",
        tuple(acts.shape[1:]),
        k_in,
        None if c_out is None else tuple(c_out.shape),
        phi.kind,
        n_cot,
        points.n,
        acts.dtype,
        chunk_bytes,
    )
    strategy, probe = _choose(
        section,
        DEFAULT_MODE if mode is None else mode,
        key,
        candidates,
        batch,
        chunk_bytes,
        edges,
        x1,
    )
    _execute(strategy, batch, chunk_bytes, edges, probe)
    return edges * _source_scale(sources)
