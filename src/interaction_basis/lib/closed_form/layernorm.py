"""Closed forms of the LayerNorm sections of the language models, per-token sections whose
Jacobians are the identity or a scaled projection plus one row or column:
:class:`LayerNormIn` (appends the variance; GPT-NeoX's dual LayerNorm-in too) and
:class:`LayerNormOut` (normalises). M′ and the edges come from these pieces, over blocks of
tokens within the memory budget, never from per-token Jacobians (method §A.6, per-token
sections)."""

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.closed_form.common import (
    F64,
    Block,
    Contraction,
    EdgeInputs,
    Points,
    identity_if_none,
    token_blocks,
)
from interaction_basis.lib.closed_form.per_token import PerToken, Setup, signed_sums


def _centred(x: Float[Tensor, "*rows width"], start: int, d: int) -> Float[Tensor, "*rows d"]:
    r = x[..., start : start + d]
    return r - r.mean(dim=-1, keepdim=True)


class _InSetup(NamedTuple):
    """The fixed matrices of :class:`LayerNormIn`'s edges: the variance's row ``c0`` of
    ``C_out``, ``Q = C⁺ C_x``, the columns ``C⁺_d`` of ``C⁺`` on the normalised coordinates
    and the gradient's scale ``2 Σ_α w_α α / d``."""

    c0: Tensor
    q: Tensor
    pinv_d: Tensor
    scale: float


class LayerNormIn(PerToken):
    """``h ↦ (var(x), h[x_start:], h[:x_start])``, ``x = h[x_start:]`` and the variance over its
    first ``d`` coordinates: a LayerNorm-in section (``fn``). ``x_start = 0`` is the plain
    ``x ↦ (var(x), x)``; GPT-NeoX's parallel block reads ``h = (y, x)`` and gives
    ``(var(x), x, y)`` (``x_start = D``), the dual LayerNorm-in.

    Its per-token Jacobian is a permutation plus one column, the integrated gradient
    ``ḡ = Σ_α w_α α · 2 (x − mean) / d`` of the variance, so with ``C = (c₀; C_x)`` (the
    variance's row first, ``C_x`` the rows of the other outputs in the order of the inputs
    they copy) ``R_t = ḡ_t c₀ᵀ + C_x`` and, with ``Q = C⁺ C_x`` and ``p_t = C⁺ ḡ_t``,

    - ``Σ R Rᵀ = |c₀|² Σ ḡ ḡᵀ + (Σ ḡ)(C_x c₀)ᵀ + (…)ᵀ + n C_x C_xᵀ``;
    - ``A_t = f̂_t ∘ (p_t c₀ᵀ + Q)``: exact sources need ``Σ_t f̂² p²``, ``Σ_t f̂² p`` and
      ``Σ_t f̂²``; position sources the signed sums ``Σ_t φ_{r,i,t} (f̂_t ∘ p_t)`` and
      ``Σ_t φ_{r,i,t} f̂_t``, one matrix product per sample, squared after the sum.

    Exact and position sources (the latter give the exact M′); hidden sources form rows.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], d: int, x_start: int = 0):
        super().__init__(fn)
        self.d, self.x_start = d, x_start

    def _scale(self, points: Points) -> float:
        return 2 * sum(a * w for a, w in zip(*points, strict=True)) / self.d

    def _c_rows(self, c: Float[Tensor, "d_out k"]) -> tuple[Tensor, Tensor]:
        """``c₀`` and ``C_x``: the rows of ``C`` for each input coordinate, in input order."""
        return c[0], torch.roll(c[1:], self.x_start, dims=0)

    def _out_rows(
        self, x: Float[Tensor, "rows width"], out: Contraction
    ) -> Float[Tensor, "rows width k_out"]:
        c0, c_x = self._c_rows(identity_if_none(out.c_out, x.shape[1] + 1, x))
        g = self._scale(out.points) * _centred(x.to(F64), self.x_start, self.d)
        rows = c_x.expand(x.shape[0], *c_x.shape).clone()
        rows[:, self.x_start : self.x_start + self.d] += g[:, :, None] * c0
        return rows

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos width"], out: Contraction
    ) -> Float[Tensor, "width width"]:
        batch, n_pos, width = acts.shape
        d, span = self.d, slice(self.x_start, self.x_start + self.d)
        c0, c_x = self._c_rows(identity_if_none(out.c_out, width + 1, acts))
        scale = self._scale(out.points)
        g_gram = acts.new_zeros(d, d, dtype=F64)
        g_sum = acts.new_zeros(d, dtype=F64)
        for b0, b1, t0, t1 in token_blocks(batch, n_pos, 8 * (width + 3 * d)):
            g = scale * _centred(acts[b0:b1, t0:t1].to(F64), self.x_start, d).reshape(-1, d)
            g_gram.addmm_(g.T, g)
            g_sum += g.sum(0)
        m = (batch * n_pos) * (c_x @ c_x.T)
        m[span, span] += (c0 @ c0) * g_gram
        cross = g_sum[:, None] * (c_x @ c0)[None, :]  # (d, width)
        m[span] += cross
        m[:, span] += cross.T
        return m

    def _edge_setup(self, inputs: EdgeInputs, out: Contraction, d_out: int) -> Setup:
        pinv = inputs.c_in_pinv.to(F64)
        c0, c_x = self._c_rows(identity_if_none(out.c_out, d_out, inputs.recon))
        pinv_d = pinv[:, self.x_start : self.x_start + self.d]
        return _InSetup(c0, pinv @ c_x, pinv_d, self._scale(out.points))

    def _edge_bytes(self, setup: Setup, d_in: int, k_in: int, k_out: int) -> tuple[int, int, int]:
        return 8 * (d_in + 2 * self.d + 4 * k_in), 2, 0

    def _projected_gradients(
        self, setup: _InSetup, inputs: EdgeInputs, block: Block
    ) -> Float[Tensor, "b t k_in"]:
        """``p_t = C⁺ ḡ_t`` for a block's tokens."""
        b0, b1, t0, t1 = block
        x = inputs.recon[b0:b1, t0:t1].to(F64)
        return (setup.scale * _centred(x, self.x_start, self.d)) @ setup.pinv_d.T

    def _edges_block(
        self, setup: Setup, inputs: EdgeInputs, block: Block, f: Float[Tensor, "b t k_in"]
    ) -> Float[Tensor, "k_out k_in"]:
        pg = self._projected_gradients(setup, inputs, block)
        f2 = f.square()
        s0, s1 = f2.sum((0, 1)), (f2 * pg).sum((0, 1))
        s2 = (f2 * pg.square()).sum((0, 1))
        c0, q = setup.c0, setup.q
        edges = s2[:, None] * c0.square() + 2 * s1[:, None] * (c0 * q) + s0[:, None] * q.square()
        return edges.T

    def _signed_block(
        self,
        setup: Setup,
        inputs: EdgeInputs,
        block: Block,
        f: Float[Tensor, "b t k_in"],
        signs: Float[Tensor, "src 1 b t"],
    ) -> Float[Tensor, "b src k_out k_in"]:
        pg = self._projected_gradients(setup, inputs, block)
        k_in = f.shape[-1]
        s = signed_sums(signs, torch.cat([f * pg, f], dim=-1))
        return setup.c0[:, None] * s[..., :k_in] + setup.q.T * s[..., k_in:]


class _NormPieces(NamedTuple):
    """Per token ``κ`` and ``s̄`` (rows,) and ``a = x_c C_n`` (rows, k); fixed ``Q``, ``B``
    (width, k): ``R_t = e₀ κ_t a_t + s̄_t Q + B`` (see :class:`LayerNormOut`)."""

    kappa: Tensor
    s_bar: Tensor
    a: Tensor
    q: Tensor
    b: Tensor


class _OutSetup(NamedTuple):
    """The fixed matrices of :class:`LayerNormOut`'s edges: ``C_n``, ``Q``, ``B`` (as in
    :class:`_NormPieces`), ``p₀`` (the variance's column of ``C⁺``), ``C⁺Q`` and ``C⁺B``."""

    c_n: Tensor
    q: Tensor
    b: Tensor
    p0: Tensor
    pq: Tensor
    pb: Tensor
    points: Points


class LayerNormOut(PerToken):
    """``(v, x[, y]) ↦ (n, x or y or nothing)`` with ``n = ((x − mean) / √(relu(v) + ε), x_c)``
    over the first ``d`` coordinates of ``x`` (``x_c`` its constant): a LayerNorm-out section
    (``fn``), which passes on the input from coordinate ``passthrough`` (``None``: nothing).

    At ``α (v, x)`` the normalised part scales as ``s(α) = (relu(α v) + ε)^{-1/2}``, so the
    integrated per-token Jacobian is a scaled projection on ``x``, one row on ``v`` and fixed
    pass-through rows: with ``P = I − 11ᵀ/d``, ``s̄ = Σ_α w_α s(α)``,
    ``κ = −½ Σ_α w_α α s(α)³ [v > 0]``, ``C = (C_n; C_p)`` and ``a_t = x_c,t C_n``,
    ``R_t = e₀ κ_t a_t + s̄_t Q + B`` where ``Q = P C_n`` on the rows of ``x`` and ``B`` holds
    the constant's and the pass-through's rows of ``C``. So

    - ``Σ R Rᵀ = e₀e₀ᵀ Σ κ²|a|² + (e₀ ((Σ κ s̄ a) Qᵀ + (Σ κ a) Bᵀ) + transpose)
      + Σ s̄² Q Qᵀ + Σ s̄ (Q Bᵀ + B Qᵀ) + n B Bᵀ``: ``O(n d k)`` instead of the rows'
      ``O(n d² k)``;
    - ``A_t = f̂_t ∘ (p₀ κ_t a_tᵀ + s̄_t C⁺Q + C⁺B)`` (``p₀`` the variance's column of ``C⁺``):
      exact sources expand its square into one product of ``f̂²`` with
      ``[κ²a², κ s̄ a, κ a]`` and three weighted sums; position sources need the signed sums
      ``Σ_t φ_{r,i,t} ψ_{t,i} f̂_t`` for the weights ``ψ ∈ {κ a, s̄, 1}``, one matrix product
      per sample, squared after the sum.

    Exact and position sources (M′: the exact sum); hidden sources form the rows ``R_t``.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], d: int, eps: float, passthrough: int | None):
        super().__init__(fn)
        self.d, self.eps, self.passthrough = d, eps, passthrough

    def _fixed(
        self, c_out: Tensor | None, width: int, like: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``C_n``, ``Q`` and ``B``."""
        d, big = self.d, self.d + 1
        d_out = big + (0 if self.passthrough is None else width - self.passthrough)
        c = identity_if_none(c_out, d_out, like)
        c_n = c[:d]
        q = c.new_zeros(width, c.shape[1])
        q[1 : 1 + d] = c_n - c_n.mean(dim=0, keepdim=True)
        b = c.new_zeros(width, c.shape[1])
        b[1 + d] = c[d]
        if self.passthrough is not None:
            b[self.passthrough :] += c[big:]
        return c_n, q, b

    def _token_pieces(
        self, x: Float[Tensor, "*rows width"], c_n: Tensor, points: Points
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``κ``, ``s̄`` and ``a`` per token, float64."""
        x = x.to(F64)
        var = x[..., 0]
        kappa, s_bar = torch.zeros_like(var), torch.zeros_like(var)
        for alpha, weight in zip(*points, strict=True):
            s = (torch.relu(alpha * var) + self.eps).rsqrt()
            s_bar += weight * s
            kappa += (-0.5 * weight * alpha) * s.pow(3) * (var > 0)
        return kappa, s_bar, _centred(x, 1, self.d) @ c_n

    def _pieces(self, x: Float[Tensor, "rows width"], out: Contraction) -> _NormPieces:
        c_n, q, b = self._fixed(out.c_out, x.shape[1], x)
        return _NormPieces(*self._token_pieces(x, c_n, out.points), q, b)

    def _out_rows(
        self, x: Float[Tensor, "rows width"], out: Contraction
    ) -> Float[Tensor, "rows width k_out"]:
        t = self._pieces(x.to(F64), out)
        rows = t.s_bar[:, None, None] * t.q + t.b
        rows[:, 0] = t.kappa[:, None] * t.a
        return rows

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos width"], out: Contraction
    ) -> Float[Tensor, "width width"]:
        batch, n_pos, width = acts.shape
        c_n, q, b = self._fixed(out.c_out, width, acts)
        k = c_n.shape[1]
        ka_sq = acts.new_zeros((), dtype=F64)
        ka_s, ka_sum = acts.new_zeros(k, dtype=F64), acts.new_zeros(k, dtype=F64)
        s2_sum, s_sum = acts.new_zeros((), dtype=F64), acts.new_zeros((), dtype=F64)
        for b0, b1, t0, t1 in token_blocks(batch, n_pos, 8 * (width + 2 * self.d + 2 * k)):
            x = acts[b0:b1, t0:t1].reshape(-1, width)
            kappa, s_bar, a = self._token_pieces(x, c_n, out.points)
            ka = kappa[:, None] * a
            ka_sq += ka.square().sum()
            ka_s += s_bar @ ka
            ka_sum += ka.sum(0)
            s2_sum += s_bar.square().sum()
            s_sum += s_bar.sum()
        first = ka_s @ q.T + ka_sum @ b.T
        qb = q @ b.T
        m = s2_sum * (q @ q.T) + s_sum * (qb + qb.T)
        m += (batch * n_pos) * (b @ b.T)
        m[0] += first
        m[:, 0] += first
        m[0, 0] += ka_sq
        return m

    def _edge_setup(self, inputs: EdgeInputs, out: Contraction, d_out: int) -> Setup:
        pinv = inputs.c_in_pinv.to(F64)
        c_n, q, b = self._fixed(out.c_out, pinv.shape[1], pinv)
        return _OutSetup(c_n, q, b, pinv[:, 0], pinv @ q, pinv @ b, out.points)

    def _edge_bytes(self, setup: Setup, d_in: int, k_in: int, k_out: int) -> tuple[int, int, int]:
        return 8 * (d_in + 2 * self.d + 5 * k_out + 2 * k_in), 3, 0

    def _block_pieces(
        self, setup: _OutSetup, inputs: EdgeInputs, block: Block
    ) -> tuple[Tensor, Tensor]:
        """``κ a`` (b, t, k_out) and ``s̄`` (b, t) of a block's tokens."""
        b0, b1, t0, t1 = block
        kappa, s_bar, a = self._token_pieces(inputs.recon[b0:b1, t0:t1], setup.c_n, setup.points)
        return kappa[..., None] * a, s_bar

    def _edges_block(
        self, setup: Setup, inputs: EdgeInputs, block: Block, f: Float[Tensor, "b t k_in"]
    ) -> Float[Tensor, "k_out k_in"]:
        ka, s_bar = self._block_pieces(setup, inputs, block)
        k = ka.shape[-1]
        f2 = f.reshape(-1, f.shape[-1]).square()
        ka, s_bar = ka.reshape(-1, k), s_bar.reshape(-1)
        sums = f2.T @ torch.cat([ka.square(), s_bar[:, None] * ka, ka], dim=1)
        s_aa, s_qa, s_ba = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
        s0, s1, s2 = f2.sum(0)[:, None], (f2.T @ s_bar)[:, None], (f2.T @ s_bar.square())
        p0, q, b = setup.p0[:, None], setup.pq, setup.pb
        edges = p0.square() * s_aa + 2 * p0 * (q * s_qa + b * s_ba)
        edges += q.square() * s2[:, None] + 2 * (q * b) * s1 + b.square() * s0
        return edges.T

    def _signed_block(
        self,
        setup: Setup,
        inputs: EdgeInputs,
        block: Block,
        f: Float[Tensor, "b t k_in"],
        signs: Float[Tensor, "src 1 b t"],
    ) -> Float[Tensor, "b src k_out k_in"]:
        ka, s_bar = self._block_pieces(setup, inputs, block)
        # Each sum keeps the signs' output axis: one row where the features share them.
        z = setup.p0 * signed_sums(signs * ka.permute(2, 0, 1), f)
        z += setup.pq.T * signed_sums(signs * s_bar, f)
        z += setup.pb.T * signed_sums(signs, f)
        return z
