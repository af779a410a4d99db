"""Closed forms of per-token sections, which map each position on its own: :class:`PerToken`
(any such map, through its per-token Jacobians) and :class:`ResidualMLP` (an LM's MLP block).
The LayerNorm sections (:mod:`.layernorm`) are per-token sections too."""

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.closed_form.common import (
    F64,
    Contraction,
    EdgeInputs,
    Points,
    as_signs,
    chunks,
)
from interaction_basis.lib.closed_form.mlp import ElementwiseMLP
from interaction_basis.lib.jacobians import SourceDraws


class PerToken:
    """A section that maps each position on its own (``y_t = fn(x_t)``): a LayerNorm-in or -out,
    an MLP block with its residual, an unembedding, or a chain of them.

    Its Jacobian is block-diagonal over positions, ``J_{t,s} = δ_ts J̄_t``, so the generic path's
    ``P_out · d_out`` autograd passes over all positions of a sample waste a factor ``P``. Here
    the integrated per-token Jacobians ``J̄_t = Σ_α w_α ∂fn(α x_t)`` come from one batched
    forward-mode pass per integration point, and with ``R_t = J̄_t C_out``:

    - ``M′ ∝ Σ_t R_t R_tᵀ`` (exact); stochastic sources contract ``R_t`` with the same ±1
      draws the generic path uses. Over positions alone they are exact for this section (only
      ``t = s`` survives, and ``φ² = 1``), so they cost nothing more;
    - ``A_{t,i,j} = f̂_{t,j} (C⁺ R_t)_{j,i}`` for the edges, summed over positions with the
      position sources' signs before squaring.

    Subclasses that know their Jacobian's structure (:class:`ResidualMLP`, :class:`LayerNormIn`,
    :class:`LayerNormOut`) override the steps of this template: the rows ``R_t``
    (``_out_rows``), exact M′ (``_m_dash_exact``) and exact edges (``_edges_exact``).
    """

    #: The kinds of stochastic sources whose draws ``jacobians`` passes to this closed form.
    takes_sources = ("pos", "hidden", "both")

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def __call__(self, x: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_out"]:
        return self.fn(x)

    def jacobians(
        self, x: Float[Tensor, "rows d_in"], points: Points
    ) -> Float[Tensor, "rows d_in d_out"]:
        """Integrated per-token Jacobians (row convention: ``dy = dx J``), float64.

        One forward-mode pass over every (token, input coordinate) pair at once: each token
        repeated ``d_in`` times with the one-hot tangents (no ``vmap``, whose per-op overhead
        dominates on these small maps).
        """
        rows, d_in = x.shape
        x_rep = x.repeat_interleave(d_in, dim=0)[:, None]
        tangents = torch.eye(d_in, dtype=x.dtype, device=x.device).repeat(rows, 1)[:, None]
        total = None
        for alpha, weight in zip(*points, strict=True):
            jac = torch.func.jvp(self.fn, (alpha * x_rep,), (tangents,))[1].to(F64)
            total = weight * jac if total is None else total + weight * jac
        assert total is not None  # an integration rule has points
        return total.view(rows, d_in, -1)

    def _out_rows(
        self, x: Float[Tensor, "rows d_in"], out: Contraction
    ) -> Float[Tensor, "rows d_in k_out"]:
        jac = self.jacobians(x, out.points)
        return jac if out.c_out is None else jac @ out.c_out.to(F64)

    def _row_bytes(self, d_in: int, d_out: int, k: int) -> int:
        return 8 * (d_in * d_out + 2 * d_in * k)

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "d_in d_in"]:
        """Exact and position sources: :meth:`_m_dash_exact` (every position source gives the
        exact sum, see the class docstring); hidden sources contract the rows with their signs.
        """
        out = Contraction(c_out, points)
        if draws is None:
            return self._m_dash_exact(acts, out)
        assert draws.draws is not None  # drawn for every stochastic kind
        if draws.kind == "pos":
            return self._m_dash_exact(acts, out) * draws.draws.shape[0]
        return self._m_dash_from_rows(acts, out, draws)

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos d_in"], out: Contraction
    ) -> Float[Tensor, "d_in d_in"]:
        return self._m_dash_from_rows(acts, out, None)

    def _m_dash_from_rows(
        self,
        acts: Float[Tensor, "batch pos d_in"],
        out: Contraction,
        draws: SourceDraws | None,
    ) -> Float[Tensor, "d_in d_in"]:
        """``Σ_t R_t R_tᵀ`` from the rows, or with hidden sources their signed sums."""
        batch, n_pos, d_in = acts.shape
        d_out = self.fn(acts[:1, :1]).shape[-1]
        k_out = d_out if out.c_out is None else out.c_out.shape[1]
        m = acts.new_zeros(d_in, d_in, dtype=F64)
        for b0, b1 in chunks(batch, n_pos * self._row_bytes(d_in, d_out, k_out)):
            r = self._out_rows(acts[b0:b1].reshape(-1, d_in), out)  # (b·s, d_in, k)
            if draws is not None:
                assert draws.draws is not None  # drawn for every stochastic kind
                r = r.view(b1 - b0, n_pos, d_in, k_out)
                if draws.kind == "hidden":  # (r, s, b, k)
                    signs = as_signs(draws.draws[:, :, b0:b1]).to(r.device)
                    r = torch.einsum("bsdk,rsbk->bsdr", r, signs)
                else:  # both: (q, b, s, k)
                    signs = as_signs(draws.draws[:, b0:b1]).to(r.device)
                    r = torch.einsum("bsdk,qbsk->bsdq", r, signs)
            flat = r.movedim(-2, 0).reshape(d_in, -1)
            m.addmm_(flat, flat.T)
        return m

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "k_out k_in"]:
        """Exact sources: :meth:`_edges_exact`; position sources sum ``A_t`` with their signs
        over positions before squaring."""
        inputs, out = EdgeInputs(recon, feats, c_in_pinv), Contraction(c_out, points)
        if draws is None:
            return self._edges_exact(inputs, out)
        return self._edges_from_rows(inputs, out, draws)

    def _edges_exact(self, inputs: EdgeInputs, out: Contraction) -> Float[Tensor, "k_out k_in"]:
        return self._edges_from_rows(inputs, out, None)

    def _edges_from_rows(
        self, inputs: EdgeInputs, out: Contraction, draws: SourceDraws | None
    ) -> Float[Tensor, "k_out k_in"]:
        recon, feats = inputs.recon, inputs.feats
        batch, n_pos, d_in = recon.shape
        k_in = inputs.c_in_pinv.shape[0]
        d_out = self.fn(recon[:1, :1]).shape[-1]
        k_out = d_out if out.c_out is None else out.c_out.shape[1]
        pinv = inputs.c_in_pinv.to(F64)
        edges = recon.new_zeros(k_in, k_out, dtype=F64)
        row = n_pos * (self._row_bytes(d_in, d_out, k_out) + 16 * k_in * k_out)
        for b0, b1 in chunks(batch, row):
            x = recon[b0:b1].reshape(-1, d_in)
            a = pinv @ self._out_rows(x, out)  # (b·s, k_in, k_out)
            a *= feats[b0:b1].reshape(-1, k_in, 1).to(F64)
            if draws is not None:  # positions: (r, i, b, t)
                assert draws.draws is not None  # drawn for every stochastic kind
                signs = as_signs(draws.draws[:, :, b0:b1]).to(a.device)
                a = torch.einsum("btji,ribt->brji", a.view(b1 - b0, n_pos, k_in, k_out), signs)
            edges += a.square_().sum(dim=tuple(range(a.ndim - 2)))
        return edges.T


class ResidualMLP(PerToken):
    """``(n, x) ↦ x + φ(n W_in) W_out``: an LM's MLP block, whose per-token Jacobian is
    ``[W_in diag(d̄) W_out; I]`` with the integrated slopes ``d̄`` (as :class:`ElementwiseMLP`).

    Exact (and position-source) M′ needs only ``S = Σ d̄ d̄ᵀ`` and ``Σ d̄``: with
    ``P = W_out C`` its blocks are ``W_in ((P Pᵀ) ∘ S) W_inᵀ``, ``W_in diag(Σ d̄) P Cᵀ`` and
    ``n C Cᵀ``; the rest uses the rows ``R = [W_in diag(d̄) P; C]`` per token.
    """

    def __init__(
        self,
        w_in: Float[Tensor, "dn hidden"],
        w_out: Float[Tensor, "hidden d"],
        activation: Callable[[Tensor], Tensor],
    ):
        self.mlp = ElementwiseMLP(w_in, w_out, activation)
        self.dn = w_in.shape[0]
        super().__init__(self._forward)

    def _forward(self, h: Float[Tensor, "batch pos width"]) -> Float[Tensor, "batch pos d"]:
        return h[..., self.dn :] + self.mlp(h[..., : self.dn])

    def _out_rows(
        self, x: Float[Tensor, "rows width"], out: Contraction
    ) -> Float[Tensor, "rows width k_out"]:
        c, p = self.mlp.out_side(out.c_out, x)
        slopes = self.mlp.slopes(x[:, : self.dn].to(F64), out.points)
        r_n = (self.mlp.w_in.to(F64) * slopes[:, None, :]) @ p
        return torch.cat([r_n, c.expand(x.shape[0], *c.shape)], dim=1)

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos width"], out: Contraction
    ) -> Float[Tensor, "width width"]:
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        dn = self.dn
        w_in = self.mlp.w_in.to(F64)
        c, p = self.mlp.out_side(out.c_out, x)
        slopes = self.mlp.slopes(x[:, :dn], out.points)
        m = x.new_zeros(x.shape[1], x.shape[1])
        m[:dn, :dn] = w_in @ ((p @ p.T) * (slopes.T @ slopes)) @ w_in.T
        m[:dn, dn:] = (w_in * slopes.sum(0)) @ p @ c.T
        m[dn:, :dn] = m[:dn, dn:].T
        m[dn:, dn:] = x.shape[0] * (c @ c.T)
        return m
