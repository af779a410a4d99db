"""Closed forms of per-token sections, which map each position on its own: :class:`PerToken`
(any such map, through its per-token Jacobians) and :class:`ResidualMLP` (an LM's MLP block).
The LayerNorm sections (:mod:`.layernorm`) are per-token sections too.

Every contraction here runs over blocks of samples × positions that fit the job's memory
budget (:func:`~interaction_basis.lib.budget.budget_bytes`, planned by
:func:`~.common.token_blocks`), so its working set does not grow with the context length
(method §A.6, per-token sections).
"""

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.budget import budget_bytes
from interaction_basis.lib.closed_form.common import (
    F64,
    Block,
    Contraction,
    EdgeInputs,
    Points,
    as_signs,
    identity_if_none,
    token_blocks,
)
from interaction_basis.lib.closed_form.mlp import (
    _MLP_ROWS,
    ElementwiseMLP,
    block_bytes,
    feature_blocks,
)
from interaction_basis.lib.jacobians import SourceDraws

#: What a section's edge contraction sets up once per call (its fixed matrices), passed to
#: its per-block steps.
Setup = Any


def signed_sums(
    signs: Float[Tensor, "src k b t"], u: Float[Tensor, "b t n"]
) -> Float[Tensor, "b src k n"]:
    """``S[b, r, i, :] = Σ_t signs[r, i, b, t] u[b, t, :]``: per-token pieces summed over
    positions with the position sources' signs, one matrix product per sample."""
    n_src, k_out, b, t = signs.shape
    flat = signs.permute(2, 0, 1, 3).reshape(b, n_src * k_out, t)
    return torch.bmm(flat, u).view(b, n_src, k_out, u.shape[-1])


class PerToken:
    """A section that maps each position on its own (``y_t = fn(x_t)``): a LayerNorm-in or -out,
    an MLP block with its residual, an unembedding, or a chain of them.

    Its Jacobian is block-diagonal over positions, ``J_{t,s} = δ_ts J̄_t``, so the generic path's
    ``P_out · d_out`` autograd passes over all positions of a sample waste a factor ``P``. Here,
    with ``R_t = J̄_t C_out`` (method §A.6, per-token sections):

    - ``M′ ∝ Σ_t R_t R_tᵀ`` (exact); stochastic sources contract ``R_t`` with the same ±1
      draws the generic path uses. Over positions alone they are exact for this section (only
      ``t = s`` survives, and ``φ² = 1``), so they cost nothing more;
    - ``A_{t,i,j} = f̂_{t,j} (C⁺ R_t)_{j,i}`` for the edges, squared per token (exact) or
      summed over positions with the position sources' signs before squaring.

    For any ``fn``, ``R_t`` comes from forward-mode passes with one-hot tangents and ``C⁺ R_t``
    from passes with the rows of ``C⁺`` as tangents (``k_in`` per token, not ``d_in``).
    Subclasses that know their Jacobian's structure (:class:`ResidualMLP`, :class:`LayerNormIn`,
    :class:`LayerNormOut`) override the steps of this template: the rows ``R_t`` (``_out_rows``,
    hidden sources only), exact M′ (``_m_dash_exact``) and the edges' per-block terms
    (``_edge_setup``, ``_edge_bytes``, ``_edges_block``, ``_signed_block``), built from the
    pieces of the Jacobian instead of its rows.
    """

    #: The kinds of stochastic sources whose draws ``jacobians`` passes to this closed form.
    takes_sources = ("pos", "hidden", "both")

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def __call__(self, x: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_out"]:
        return self.fn(x)

    def _d_out(self, x: Float[Tensor, "batch pos d_in"]) -> int:
        return self.fn(x[:1, :1]).shape[-1]

    def pushforward(
        self, x: Float[Tensor, "rows d_in"], tangents: Float[Tensor, "m d_in"], points: Points
    ) -> Float[Tensor, "rows m d_out"]:
        """``tangents J̄_t`` for every token ``t`` (row convention: ``dy = dx J``), float64.

        One forward-mode pass over every (token, tangent) pair at once: each token repeated
        once per tangent (no ``vmap``, whose per-op overhead dominates on these small maps).
        """
        rows, m = x.shape[0], tangents.shape[0]
        x_rep = x.repeat_interleave(m, dim=0)[:, None]
        tans = tangents.to(x.dtype).repeat(rows, 1)[:, None]
        total = None
        for alpha, weight in zip(*points, strict=True):
            jac = torch.func.jvp(self.fn, (alpha * x_rep,), (tans,))[1].to(F64)
            total = weight * jac if total is None else total + weight * jac
        assert total is not None  # an integration rule has points
        return total.view(rows, m, -1)

    def jacobians(
        self, x: Float[Tensor, "rows d_in"], points: Points
    ) -> Float[Tensor, "rows d_in d_out"]:
        """Integrated per-token Jacobians (row convention: ``dy = dx J``), float64."""
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return self.pushforward(x, eye, points)

    def _out_rows(
        self, x: Float[Tensor, "rows d_in"], out: Contraction
    ) -> Float[Tensor, "rows d_in k_out"]:
        jac = self.jacobians(x, out.points)
        return jac if out.c_out is None else jac @ out.c_out.to(F64)

    def _row_bytes(self, d_in: int, d_out: int, k: int) -> int:
        """Bytes per token of :meth:`_out_rows`: the repeated inputs and tangents, the
        Jacobian, its running sum and the rows."""
        return 8 * (2 * d_in * d_in + 2 * d_in * d_out + 2 * d_in * k)

    # --- M′ --------------------------------------------------------------------------------

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
        """``Σ_t R_t R_tᵀ`` from the rows, or with hidden sources their signed sums, over
        blocks of tokens within the budget."""
        batch, n_pos, d_in = acts.shape
        d_out = self._d_out(acts)
        k_out = d_out if out.c_out is None else out.c_out.shape[1]
        n_signed = 0 if draws is None or draws.draws is None else draws.draws.shape[0]
        token = self._row_bytes(d_in, d_out, k_out) + 8 * n_signed * (d_in + k_out)
        m = acts.new_zeros(d_in, d_in, dtype=F64)
        for b0, b1, t0, t1 in token_blocks(batch, n_pos, token):
            r = self._out_rows(acts[b0:b1, t0:t1].reshape(-1, d_in), out)  # (b·t, d_in, k)
            if draws is not None:
                assert draws.draws is not None  # drawn for every stochastic kind
                r = r.view(b1 - b0, t1 - t0, d_in, k_out)
                if draws.kind == "hidden":  # (r, t, b, k)
                    signs = as_signs(draws.draws[:, t0:t1, b0:b1]).to(r.device)
                    r = torch.einsum("bsdk,rsbk->bsdr", r, signs)
                else:  # both: (q, b, t, k)
                    signs = as_signs(draws.draws[:, b0:b1, t0:t1]).to(r.device)
                    r = torch.einsum("bsdk,qbsk->bsdq", r, signs)
            flat = r.movedim(-2, 0).reshape(d_in, -1)
            m.addmm_(flat, flat.T)
        return m

    # --- edges -----------------------------------------------------------------------------

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "k_out k_in"]:
        """Exact sources: ``Σ_t A_t²``; position sources sum ``A_t`` with their signs over
        positions before squaring, one draw per source for all output features (method §A.6).
        Both from the section's pieces, over blocks of tokens within the budget: a sample's
        signed sums carry over from one block to the next."""
        signs = None if draws is None else draws.edge_signs()
        inputs, out = EdgeInputs(recon, feats, c_in_pinv), Contraction(c_out, points)
        batch, n_pos, d_in = recon.shape
        k_in = c_in_pinv.shape[0]
        d_out = self._d_out(recon)
        k_out = d_out if c_out is None else c_out.shape[1]
        setup = self._edge_setup(inputs, out, d_out)
        token, pieces, fixed = self._edge_bytes(setup, d_in, k_in, k_out)
        n_src = 0 if signs is None else signs.shape[0]
        # Per token: the signs (float64, also as the pieces' weights) and the features.
        token += 8 * (n_src * k_out * (pieces + 1) + 2 * k_in)
        # Per sample: the running signed sums, one block's, and the square.
        sample = 8 * n_src * k_out * k_in * (pieces + 3)
        edges = recon.new_zeros(k_out, k_in, dtype=F64)
        z: Tensor | None = None
        for block in token_blocks(batch, n_pos, token, sample, fixed):
            b0, b1, t0, t1 = block
            f = feats[b0:b1, t0:t1].to(F64)
            if signs is None:
                edges += self._edges_block(setup, inputs, block, f)
                continue
            s = as_signs(signs[:, :, b0:b1, t0:t1]).to(edges.device)  # (r, 1, b, t)
            part = self._signed_block(setup, inputs, block, f, s)  # (b, r, k_out, k_in)
            z = part if t0 == 0 or z is None else z.add_(part)
            if t1 == n_pos:
                edges += z.square_().sum((0, 1))
        return edges

    def _edge_setup(self, inputs: EdgeInputs, out: Contraction, d_out: int) -> Setup:
        """The fixed matrices of the edges: here ``C⁺`` and ``C_out`` in float64."""
        c_out = identity_if_none(out.c_out, d_out, inputs.recon)
        return inputs.c_in_pinv.to(F64), c_out, out.points

    def _edge_bytes(self, setup: Setup, d_in: int, k_in: int, k_out: int) -> tuple[int, int, int]:
        """Bytes per token of a block's pieces, how many ``(k_out, k_in)`` signed sums a sample
        keeps, and fixed bytes per block. Here the pushforward of the ``k_in`` rows of ``C⁺``
        (repeated inputs, tangents, outputs and their sum) and ``A_t``."""
        d_out = setup[1].shape[0]
        return 8 * k_in * (2 * d_in + 2 * d_out + 2 * k_out), 0, 0

    def _feature_rows(
        self, setup: Setup, inputs: EdgeInputs, block: Block, f: Float[Tensor, "b t k_in"]
    ) -> Float[Tensor, "b t k_in k_out"]:
        """``A_t = f̂_t ∘ C⁺ J̄_t C_out`` of a block's tokens."""
        pinv, c_out, points = setup
        b0, b1, t0, t1 = block
        x = inputs.recon[b0:b1, t0:t1].reshape(-1, pinv.shape[1])
        a = self.pushforward(x, pinv, points) @ c_out  # (b·t, k_in, k_out)
        a = a.view(b1 - b0, t1 - t0, *a.shape[1:])
        return a.mul_(f[..., None])

    def _edges_block(
        self, setup: Setup, inputs: EdgeInputs, block: Block, f: Float[Tensor, "b t k_in"]
    ) -> Float[Tensor, "k_out k_in"]:
        """``Σ_t A_t²`` over a block's tokens (exact sources)."""
        return self._feature_rows(setup, inputs, block, f).square_().sum((0, 1)).T

    def _signed_block(
        self,
        setup: Setup,
        inputs: EdgeInputs,
        block: Block,
        f: Float[Tensor, "b t k_in"],
        signs: Float[Tensor, "src 1 b t"],
    ) -> Float[Tensor, "b src k_out k_in"]:
        """``Σ_t φ_{r,t} A_{t,i,j}`` over a block's tokens (position sources, shared by the
        output features ``i``)."""
        a = self._feature_rows(setup, inputs, block, f)
        return torch.einsum("rbt,btji->brij", signs[:, 0], a)


class ResidualMLP(PerToken):
    """``(n, x) ↦ x + φ(n W_in) W_out``: an LM's MLP block, whose per-token Jacobian is
    ``[W_in diag(d̄) W_out; I]`` with the integrated slopes ``d̄`` (as :class:`ElementwiseMLP`).

    Exact (and position-source) M′ needs only ``S = Σ d̄ d̄ᵀ`` and ``Σ d̄``: with
    ``P = W_out C`` its blocks are ``W_in ((P Pᵀ) ∘ S) W_inᵀ``, ``W_in diag(Σ d̄) P Cᵀ`` and
    ``n C Cᵀ``. The edges take per token ``C⁺R_t = (C⁺_n W_in) diag(d̄_t) P + C⁺_x C`` (one
    ``k_in × k_out`` product over the active neurons, :func:`~.mlp.feature_blocks`), squared
    or, with position sources (whose signs the output features share), summed over tokens
    first, through the neurons (:meth:`_signed_block`); hidden sources use the rows
    ``R = [W_in diag(d̄) P; C]``.
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

    def _slope_bytes(self) -> int:
        """Bytes per token of :meth:`ElementwiseMLP.slopes`: pre-activations, the point, its
        gradient and the running sum."""
        return 8 * (4 * self.mlp.w_in.shape[1] + self.mlp.w_in.shape[0])

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos width"], out: Contraction
    ) -> Float[Tensor, "width width"]:
        batch, n_pos, width = acts.shape
        dn = self.dn
        w_in = self.mlp.w_in.to(F64)
        c, p = self.mlp.out_side(out.c_out, acts)
        hidden = w_in.shape[1]
        gram = acts.new_zeros(hidden, hidden, dtype=F64)
        total = acts.new_zeros(hidden, dtype=F64)
        for b0, b1, t0, t1 in token_blocks(batch, n_pos, self._slope_bytes(), 0, 8 * hidden**2):
            x = acts[b0:b1, t0:t1, :dn].reshape(-1, dn).to(F64)
            slopes = self.mlp.slopes(x, out.points)
            gram.addmm_(slopes.T, slopes)
            total += slopes.sum(0)
        m = acts.new_zeros(width, width, dtype=F64)
        m[:dn, :dn] = w_in @ ((p @ p.T) * gram) @ w_in.T
        m[:dn, dn:] = (w_in * total) @ p @ c.T
        m[dn:, :dn] = m[:dn, dn:].T
        m[dn:, dn:] = (batch * n_pos) * (c @ c.T)
        return m

    def _edge_setup(self, inputs: EdgeInputs, out: Contraction, d_out: int) -> Setup:
        """``C⁺_n W_in``, ``P = W_out C`` and ``C⁺_x C``, and the rows per product block."""
        pinv = inputs.c_in_pinv.to(F64)
        c, p = self.mlp.out_side(out.c_out, inputs.recon)
        w_feats = pinv[:, : self.dn] @ self.mlp.w_in.to(F64)
        base = pinv[:, self.dn :] @ c
        row = block_bytes(w_feats.shape[1], *base.shape)
        rows = max(1, min(_MLP_ROWS, budget_bytes() // (2 * row)))
        return w_feats, p, base, out.points, rows

    def _edge_bytes(self, setup: Setup, d_in: int, k_in: int, k_out: int) -> tuple[int, int, int]:
        w_feats, _, _, _, rows = setup
        hidden = w_feats.shape[1]
        # The larger of the exact edges' product blocks and the position sources' G.
        fixed = max(rows * block_bytes(hidden, k_in, k_out), 8 * (2 * k_in * hidden + k_in * k_out))
        return self._slope_bytes(), 1, fixed

    def _blocks(self, setup: Setup, inputs: EdgeInputs, block: Block, f: Tensor):
        """Per sample of the block: ``(sample, rows, A of those rows)``, ``A = f̂ ∘ C⁺R``."""
        w_feats, p, base, points, rows_per_block = setup
        b0, b1, t0, t1 = block
        x = inputs.recon[b0:b1, t0:t1, : self.dn].to(F64)
        for b in range(b1 - b0):
            slopes = self.mlp.slopes(x[b], points)
            for rows, a in feature_blocks(slopes, w_feats, p, base, rows_per_block):
                a *= f[b, rows, :, None]
                yield b, rows, a

    def _edges_block(
        self, setup: Setup, inputs: EdgeInputs, block: Block, f: Float[Tensor, "b t k_in"]
    ) -> Float[Tensor, "k_out k_in"]:
        edges = f.new_zeros(f.shape[-1], setup[1].shape[1])
        for _, _, a in self._blocks(setup, inputs, block, f):
            edges += a.square_().sum(0)
        return edges.T

    def _signed_block(
        self,
        setup: Setup,
        inputs: EdgeInputs,
        block: Block,
        f: Float[Tensor, "b t k_in"],
        signs: Float[Tensor, "src 1 b t"],
    ) -> Float[Tensor, "b src k_out k_in"]:
        """``Σ_t φ_t A_t = (C⁺_n W_in ∘ G) P + (Σ_t φ_t f̂_t) ∘ C⁺_x C`` with
        ``G_jn = Σ_t φ_t f̂_tj d̄_tn``: the sum over tokens comes before the output side, since
        the output features share the signs (``2 k_in N (P + k_out)`` per sample and source,
        not ``2 P k_in N k_out``)."""
        w_feats, p, base, points, _ = setup
        b0, b1, t0, t1 = block
        x = inputs.recon[b0:b1, t0:t1, : self.dn].to(F64)
        z = f.new_zeros(f.shape[0], signs.shape[0], p.shape[1], f.shape[-1])
        for b in range(b1 - b0):
            slopes = self.mlp.slopes(x[b], points)  # (t, hidden)
            for r in range(signs.shape[0]):
                signed_f = signs[r, 0, b, :, None] * f[b]  # (t, k_in)
                g = (signed_f.T @ slopes).mul_(w_feats)  # (k_in, hidden)
                z[b, r] = g.matmul(p).addcmul_(signed_f.sum(0)[:, None], base).T
        return z
