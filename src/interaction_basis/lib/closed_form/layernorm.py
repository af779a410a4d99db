"""Closed forms of the LayerNorm sections of the language models, per-token sections whose
Jacobians are the identity or a scaled projection plus one row or column:
:class:`LayerNormIn` (appends the variance) and :class:`LayerNormOut` (normalises)."""

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.closed_form.common import (
    F64,
    Contraction,
    EdgeInputs,
    Points,
    identity_if_none,
)
from interaction_basis.lib.closed_form.per_token import PerToken


class LayerNormIn(PerToken):
    """``x ↦ (var(x), x)``: a LayerNorm-in section (``fn``), the variance over the first ``d``
    coordinates. Its per-token Jacobian is the identity plus one column, the integrated
    gradient ``ḡ = Σ_α w_α α · 2 (x − mean) / d`` of the variance, so with ``C = (c₀; C_x)``
    (the variance's row first) ``R_t = ḡ_t c₀ᵀ + C_x`` and

    - ``Σ R Rᵀ = |c₀|² Σ ḡ ḡᵀ + (Σ ḡ)(C_x c₀)ᵀ + (…)ᵀ + n C_x C_xᵀ``;
    - ``Σ_t A_t² = c₀² Σ_t f̂² (C⁺ḡ)² + 2 c₀ Q Σ_t f̂² C⁺ḡ + Q² Σ_t f̂²`` per (feature, output),
      with ``Q = C⁺ C_x``.

    Exact and position sources (the latter give the exact sum); hidden sources form rows.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], d: int):
        super().__init__(fn)
        self.d = d

    def _gradients(self, x: Float[Tensor, "rows width"], points: Points) -> Tensor:
        r = x[:, : self.d]
        scale = 2 * sum(a * w for a, w in zip(*points, strict=True)) / self.d
        g = torch.zeros_like(x)
        g[:, : self.d] = scale * (r - r.mean(dim=1, keepdim=True))
        return g

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos width"], out: Contraction
    ) -> Float[Tensor, "width width"]:
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        c = identity_if_none(out.c_out, x.shape[1] + 1, x)
        c0, c_x = c[0], c[1:]
        g = self._gradients(x, out.points)
        cross = g.sum(0)[:, None] * (c_x @ c0)[None, :]
        return (c0 @ c0) * (g.T @ g) + cross + cross.T + x.shape[0] * (c_x @ c_x.T)

    def _edges_exact(self, inputs: EdgeInputs, out: Contraction) -> Float[Tensor, "k_out k_in"]:
        x = inputs.recon.reshape(-1, inputs.recon.shape[-1]).to(F64)
        f2 = inputs.feats.reshape(-1, inputs.feats.shape[-1]).to(F64).square()
        pinv = inputs.c_in_pinv.to(F64)
        c = identity_if_none(out.c_out, x.shape[1] + 1, x)
        c0, q = c[0], pinv @ c[1:]
        pg = self._gradients(x, out.points) @ pinv.T  # (rows, k_in): C⁺ḡ per token
        s0, s1, s2 = f2.sum(0), (f2 * pg).sum(0), (f2 * pg.square()).sum(0)
        edges = s2[:, None] * c0.square() + 2 * s1[:, None] * (c0 * q) + s0[:, None] * q.square()
        return edges.T


class _NormPieces(NamedTuple):
    """Per token ``κ`` and ``s̄`` (rows,) and ``a = x_c C_n`` (rows, k); fixed ``Q``, ``B``
    (width, k): ``R_t = e₀ κ_t a_t + s̄_t Q + B`` (see :class:`LayerNormOut`)."""

    kappa: Tensor
    s_bar: Tensor
    a: Tensor
    q: Tensor
    b: Tensor


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
    - ``Σ_t A_t²`` expands the square ``f̂²(p₀ κ a + s̄ C⁺Q + C⁺B)²`` (``p₀`` the variance's
      column of ``C⁺``) into one product of ``f̂²`` with ``[κ²a², κ s̄ a, κ a]`` and three
      weighted sums.

    Exact and position sources (M′: the exact sum); the rest forms the rows ``R_t``.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], d: int, eps: float, passthrough: int | None):
        super().__init__(fn)
        self.d, self.eps, self.passthrough = d, eps, passthrough

    def _pieces(self, x: Float[Tensor, "rows width"], out: Contraction) -> _NormPieces:
        d, big = self.d, self.d + 1
        width = x.shape[1]
        d_out = big + (0 if self.passthrough is None else width - self.passthrough)
        c = identity_if_none(out.c_out, d_out, x)
        var = x[:, 0]
        kappa, s_bar = torch.zeros_like(var), torch.zeros_like(var)
        for alpha, weight in zip(*out.points, strict=True):
            s = (torch.relu(alpha * var) + self.eps).rsqrt()
            s_bar += weight * s
            kappa += (-0.5 * weight * alpha) * s.pow(3) * (var > 0)
        r = x[:, 1 : 1 + d]
        c_n = c[:d]
        a = (r - r.mean(dim=1, keepdim=True)) @ c_n
        q = x.new_zeros(width, c.shape[1])
        q[1 : 1 + d] = c_n - c_n.mean(dim=0, keepdim=True)
        b = x.new_zeros(width, c.shape[1])
        b[1 + d] = c[d]
        if self.passthrough is not None:
            b[self.passthrough :] += c[big:]
        return _NormPieces(kappa, s_bar, a, q, b)

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
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        t = self._pieces(x, out)
        ka = t.kappa[:, None] * t.a
        first = (t.s_bar @ ka) @ t.q.T + ka.sum(0) @ t.b.T
        qb = t.q @ t.b.T
        m = t.s_bar.square().sum() * (t.q @ t.q.T) + t.s_bar.sum() * (qb + qb.T)
        m += x.shape[0] * (t.b @ t.b.T)
        m[0] += first
        m[:, 0] += first
        m[0, 0] += ka.square().sum()
        return m

    def _edges_exact(self, inputs: EdgeInputs, out: Contraction) -> Float[Tensor, "k_out k_in"]:
        x = inputs.recon.reshape(-1, inputs.recon.shape[-1]).to(F64)
        f2 = inputs.feats.reshape(-1, inputs.feats.shape[-1]).to(F64).square()
        pinv = inputs.c_in_pinv.to(F64)
        t = self._pieces(x, out)
        k = t.a.shape[1]
        ka = t.kappa[:, None] * t.a
        sums = f2.T @ torch.cat([ka.square(), t.s_bar[:, None] * ka, ka], dim=1)
        s_aa, s_qa, s_ba = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
        s0, s1, s2 = f2.sum(0)[:, None], (f2.T @ t.s_bar)[:, None], (f2.T @ t.s_bar.square())
        p0, q, b = pinv[:, :1], pinv @ t.q, pinv @ t.b
        edges = p0.square() * s_aa + 2 * p0 * (q * s_qa + b * s_ba)
        edges += q.square() * s2[:, None] + 2 * (q * b) * s1 + b.square() * s0
        return edges.T
