"""Sections whose Jacobian contractions have closed forms (lib_spec A.3 step 3, A.6).

The generic path (:mod:`interaction_basis.lib.jacobians`) takes one autograd pass per output
coordinate or input direction. For the blocks of the mod-add transformer (attention, MLP,
unembedding), the layers of the MLPs and the sections of the language models (per-token
LayerNorm/unembedding sections, the MLP block, causal self-attention), the Jacobian has a
structure that makes M′ and the edges much cheaper to contract directly. The classes below
are ordinary sections (callables on ``(batch, pos, d)`` activations) that also implement
:class:`~interaction_basis.lib.jacobians.ClosedForm`; ``jacobians`` uses them under
``mode="auto"`` for exact sources and the stochastic ones they list in ``takes_sources``,
while ``mode="forward"``/``"reverse"`` still run autograd, which the tests use as the
reference.

Notation (row vectors, ``dx ↦ dx J``): ``J̄_s = Σ_α w_α ∂F(α x)/∂x_s`` is the integrated
Jacobian of the section at input position ``s`` (lib_spec A.7), ``R_s = J̄_s C_out``
(``d_in × k_out``), ``M′ ∝ Σ_{x,s} R_s R_sᵀ`` and ``E_{ij} ∝ Σ_x (Σ_s f̂_{s,j} (C⁺ R_s)_{j,i})²``.
Everything is computed in float64, whatever the activations' dtype.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interaction_basis.lib.jacobians import SourceDraws

Points = tuple[Sequence[float], Sequence[float]]

#: Bytes of the largest per-chunk intermediate; bounds memory and keeps work in cache.
CHUNK_BYTES = 16 * 2**20

F64 = torch.float64

#: Largest working set of one sample a closed form takes on (attention's pair terms).
MAX_SAMPLE_BYTES = 2 * 2**30


def _chunks(n: int, bytes_per_row: int) -> list[tuple[int, int]]:
    size = max(1, CHUNK_BYTES // max(1, bytes_per_row))
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _identity_if_none(c: Tensor | None, d: int, like: Tensor) -> Tensor:
    return torch.eye(d, dtype=F64, device=like.device) if c is None else c.to(F64)


class Linear:
    """``x ↦ x W``: the Jacobian is ``W`` everywhere, so ``M′ ∝ n (W C)(W C)ᵀ`` and
    ``E_{ij} ∝ (C⁺ W C)_{j,i}² Σ_x f̂_j²``."""

    def __init__(self, w: Float[Tensor, "d_in d_out"]):
        self.w = w

    def __call__(self, x: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_out"]:
        return x @ self.w

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "d_in d_in"]:
        r = self.w.to(F64) @ _identity_if_none(c_out, self.w.shape[1], acts)
        return (acts.shape[0] * acts.shape[1]) * (r @ r.T)

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        c_out = _identity_if_none(c_out, self.w.shape[1], recon)
        q = c_in_pinv.to(F64) @ self.w.to(F64) @ c_out
        return (q.square() * feats.to(F64).square().sum((0, 1))[:, None]).T


class ElementwiseMLP:
    """``x ↦ [x +] φ(x W_in) [W_out]``: an MLP block, or one hidden layer (``w_out=None``),
    with an elementwise activation φ (any: its slopes come from autograd).

    Its integrated Jacobian is ``J̄ = [I +] W_in diag(d̄) W_out`` with the slopes
    ``d̄ = Σ_α w_α φ'(α x W_in)`` (folded biases scale with α too), so

    - ``M′`` needs only ``Σ_x d̄`` and ``S = Σ_x d̄ d̄ᵀ``:
      ``Σ_x R Rᵀ = [n C Cᵀ + W_in diag(Σ d̄) P Cᵀ + (…)ᵀ +] W_in ((P Pᵀ) ∘ S) W_inᵀ``
      with ``P = W_out C_out``;
    - the edges need per sample ``C⁺R = [C⁺C_out +] (C⁺W_in) diag(d̄) P``, one matrix product.
    """

    def __init__(
        self,
        w_in: Float[Tensor, "d_in hidden"],
        w_out: Float[Tensor, "hidden d_out"] | None = None,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        residual: bool = False,
    ):
        d_out = w_in.shape[1] if w_out is None else w_out.shape[1]
        if residual and w_in.shape[0] != d_out:
            raise ValueError(
                f"A residual MLP maps d to d; got W_in {tuple(w_in.shape)}, "
                f"W_out {None if w_out is None else tuple(w_out.shape)}."
            )
        self.w_in, self.w_out, self.d_out = w_in, w_out, d_out
        self.activation, self.residual = activation, residual

    def __call__(self, x: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_out"]:
        out = self.activation(x @ self.w_in)
        if self.w_out is not None:
            out = out @ self.w_out
        return x + out if self.residual else out

    def _out_side(self, c_out: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """``C_out`` (identity if ``None``) and ``P = W_out C_out``, in float64."""
        c_out = _identity_if_none(c_out, self.d_out, like)
        return c_out, c_out if self.w_out is None else self.w_out.to(F64) @ c_out

    def _slopes(self, x: Float[Tensor, "rows d_in"], points: Points) -> Float[Tensor, "rows h"]:
        z = x @ self.w_in.to(F64)
        total = torch.zeros_like(z)
        # φ is elementwise: the gradient of Σ φ at α z is φ'(α z). Reverse mode, because forward
        # mode's first use in a process costs about a second of start-up (decompositions). The
        # point is not a leaf: module backward hooks (FlopCounterMode's) reject leaf inputs.
        with torch.enable_grad():
            base = z.detach().requires_grad_()
            for alpha, weight in zip(*points, strict=True):
                point = alpha * base
                (slope,) = torch.autograd.grad(self.activation(point).sum(), point)
                total += weight * slope
        return total

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "d_in d_in"]:
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        w_in = self.w_in.to(F64)
        c_out, p = self._out_side(c_out, x)
        slopes = self._slopes(x, points)
        m = w_in @ ((p @ p.T) * (slopes.T @ slopes)) @ w_in.T
        if self.residual:
            cross = (w_in * slopes.sum(0)) @ p @ c_out.T
            m += cross + cross.T + x.shape[0] * (c_out @ c_out.T)
        return m

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        x = recon.reshape(-1, recon.shape[-1]).to(F64)
        f = feats.reshape(-1, feats.shape[-1]).to(F64)
        pinv = c_in_pinv.to(F64)
        c_out, p = self._out_side(c_out, x)
        slopes = self._slopes(x, points)
        w_in_feats = pinv @ self.w_in.to(F64)  # (k_in, hidden)
        if self.residual:
            base = pinv @ c_out
        else:
            base = x.new_zeros(pinv.shape[0], c_out.shape[1])
        binary = bool(((slopes == 0) | (slopes == 1)).all())  # ReLU, at any α > 0
        blocks = _binary_blocks if binary else _dense_blocks
        edges = torch.zeros_like(base)
        for rows, a in blocks(slopes, w_in_feats, p, base):
            a *= f[rows, :, None]
            edges += a.square_().sum(0)
        return edges.T


#: Rows per block of the MLP's per-sample products: (rows, hidden, k_out) stays in the L2 cache.
_MLP_ROWS = 16


def _dense_blocks(
    slopes: Float[Tensor, "rows hidden"],
    w_feats: Float[Tensor, "k_in hidden"],
    p: Float[Tensor, "hidden k_out"],
    base: Float[Tensor, "k_in k_out"],
) -> Iterator[tuple[slice, Float[Tensor, "block k_in k_out"]]]:
    """``base + w_feats diag(slopes_x) p`` for blocks of rows ``x``."""
    for start in range(0, slopes.shape[0], _MLP_ROWS):
        rows = slice(start, start + _MLP_ROWS)
        scaled = slopes[rows, :, None] * p  # (block, hidden, k_out)
        yield rows, torch.baddbmm(base, w_feats.expand(len(scaled), -1, -1), scaled)


def _binary_blocks(
    slopes: Float[Tensor, "rows hidden"],
    w_feats: Float[Tensor, "k_in hidden"],
    p: Float[Tensor, "hidden k_out"],
    base: Float[Tensor, "k_in k_out"],
) -> Iterator[tuple[Tensor, Float[Tensor, "block k_in k_out"]]]:
    """:func:`_dense_blocks` for 0/1 slopes, summing over at most half the neurons per row: the
    active ones, or where more than half are active, the full product minus the inactive ones.

    Rows go in blocks of similar counts, padded with a zero neuron.
    """
    hidden = slopes.shape[1]
    active = slopes != 0
    mostly_active = active.sum(1) > hidden // 2
    p_pad = torch.cat([p, p.new_zeros(1, p.shape[1])])
    w_pad = torch.cat([w_feats.T, w_feats.new_zeros(1, w_feats.shape[0])])
    for complement in (False, True):
        selected = torch.nonzero(mostly_active == complement).flatten()
        used = ~active[selected] if complement else active[selected]
        counts, order = used.sum(1).sort()
        selected, used = selected[order], used[order]
        # Each row's neuron indices in ascending order, then the padding index ``hidden``.
        neurons = torch.where(used, torch.arange(hidden, device=used.device), hidden).sort(1)[0]
        start_value = base + w_feats @ p if complement else base
        for start in range(0, len(selected), _MLP_ROWS):
            stop = min(start + _MLP_ROWS, len(selected))
            width = int(counts[stop - 1])
            index = neurons[start:stop, :width].reshape(-1)
            # Explicit last sizes: a block of rows with no neuron to sum (width 0) stays valid.
            p_rows = p_pad.index_select(0, index).view(stop - start, width, p_pad.shape[1])
            w_rows = w_pad.index_select(0, index).view(stop - start, width, w_pad.shape[1])
            a = torch.baddbmm(
                start_value, w_rows.transpose(1, 2), p_rows, alpha=-1.0 if complement else 1.0
            )
            yield selected[start:stop], a


class _Terms(NamedTuple):
    """Per chunk of samples: ``a`` (batch, pos, 1 + heads) integrated pattern weights (the
    residual first), the head-space codes ``q`` (batch, head, d_head) and ``k`` (batch, pos,
    head, d_head) of the vectors ``u`` at α = 1, and ``g`` (batch, pos, head, k_out), their
    integrated partners ``c Σ_α w_α α g_hr(α x)`` (as ``u(α x) = α u(x)``)."""

    a: Tensor
    q: Tensor
    k: Tensor
    g: Tensor


class LastPositionAttention:
    """Multi-head attention of the last position over all positions, plus the residual
    stream of the last position: ``x ↦ x_L + Σ_h Σ_p A_hp x_p M_h`` with ``M_h = W_V^h W_O^h``,
    ``A_h = softmax_p(c · x_L B_h x_pᵀ)``, ``B_h = W_Q^h W_K^hᵀ`` (output: one position).

    Differentiating the softmax gives, per input position ``s`` (``L`` the last),
    ``J_s = δ_sL I + Σ_h A_hs M_h + c Σ_h (x_L B_h)ᵀ g_hs + δ_sL c Σ_{h,r} (x_r B_hᵀ)ᵀ g_hr``
    with ``g_hr = A_hr (x_r M_h − Σ_q A_hq x_q M_h)``: a few dense terms shared by every sample,
    weighted by the pattern, plus rank ``r = H(1 + n)`` per sample. At ``α x`` the vectors
    ``x B`` scale by α, so the integration points add up inside ``g`` and the rank stays ``r``.
    So ``R_s = Σ_h a_hs N_h + Uᵀ W_s`` with ``N = (C_out, M_1 C_out, …)``, ``U`` the ``r``
    vectors ``x B`` (rows) and ``W_s`` their partners ``g`` at ``s``, and

    - ``Σ R_s R_sᵀ = Σ_{h,g} (Σ a_h a_g) N_h N_gᵀ + (Σ_h N_h T_h + transpose) + Σ_x Uᵀ G U``
      with ``T_h = Σ_{x,s} a_hs W_sᵀ U`` (formed in head space) and ``G = Σ_s W_s W_sᵀ``;
    - ``C⁺R_s = Σ_h a_hs (C⁺N_h) + (C⁺Uᵀ) W_s`` for the edges.
    """

    def __init__(
        self,
        w_q: Float[Tensor, "d heads_dh"],
        w_k: Float[Tensor, "d heads_dh"],
        w_v: Float[Tensor, "d heads_dv"],
        w_o: Float[Tensor, "heads_dv d"],
        n_heads: int,
    ):
        self.w_q, self.w_k, self.w_v, self.w_o = w_q, w_k, w_v, w_o
        self.n_heads = n_heads
        self.d_head = w_q.shape[1] // n_heads
        self.d_value = w_v.shape[1] // n_heads
        self.scale = self.d_head**-0.5
        d = w_q.shape[0]
        self._q = w_q.to(F64).reshape(d, n_heads, self.d_head).permute(1, 0, 2)  # (h, d, dh)
        self._k = w_k.to(F64).reshape(d, n_heads, self.d_head).permute(1, 0, 2)
        v = w_v.to(F64).reshape(d, n_heads, self.d_value).permute(1, 0, 2)
        self._m = v @ w_o.to(F64).reshape(n_heads, self.d_value, -1)  # (h, d, d)

    def __call__(self, x: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch 1 d"]:
        batch, n_pos = x.shape[0], x.shape[1]
        h, dh = self.n_heads, self.d_head
        last = x[:, -1]
        # Only the last position's query is needed; it sees every position (no causal cut).
        q = (last @ self.w_q).reshape(batch, 1, h, dh)
        k = (x @ self.w_k).reshape(batch, n_pos, h, dh)
        v = (x @ self.w_v).reshape(batch, n_pos, h, self.d_value)
        pattern = ((q * k).sum(-1) * self.scale).softmax(dim=1)  # (batch, pos, head)
        z = (pattern.unsqueeze(-1) * v).sum(1).reshape(batch, h * self.d_value)
        return (last + z @ self.w_o).unsqueeze(1)

    def _outputs(self, c_out: Tensor) -> Float[Tensor, "heads1 d k_out"]:
        """``N``: ``C_out`` (the residual) and ``M_h C_out`` per head."""
        return torch.cat([c_out[None], self._m @ c_out])

    def _terms(self, x: Float[Tensor, "batch pos d"], n_mats: Tensor, points: Points) -> _Terms:
        batch, n_pos, d = x.shape
        heads, k_out = self.n_heads, n_mats.shape[-1]
        q = (x[:, -1] @ self.w_q.to(F64)).view(batch, heads, self.d_head)
        k = (x @ self.w_k.to(F64)).view(batch, n_pos, heads, self.d_head)
        scores = torch.einsum("bhe,bphe->bph", q, k) * self.scale
        y = (x @ n_mats[1:].permute(1, 0, 2).reshape(d, -1)).view(batch, n_pos, heads, k_out)
        a = x.new_zeros(batch, n_pos, 1 + heads)
        a[:, -1, 0] = 1.0  # the residual
        g = torch.zeros_like(y)
        for alpha, weight in zip(*points, strict=True):
            pattern = (alpha**2 * scores).softmax(dim=1)  # q and k both scale with α
            mean = torch.einsum("bph,bphk->bhk", pattern, y)
            g += pattern[..., None] * (y - mean[:, None]) * (self.scale * weight * alpha**2)
            a[..., 1:] += weight * pattern
        return _Terms(a, q, k, g)

    def _vectors(self, t: _Terms, proj: Tensor | None = None) -> Float[Tensor, "batch r dim"]:
        """``U``: the query-side ``q_h W_K^hᵀ`` then the key-side ``k_hr W_Q^hᵀ`` (ordered
        (r, h)) vectors, each through ``proj`` (``dim × d``) if given."""
        w_k, w_q = self._k, self._q
        if proj is not None:
            w_k, w_q = proj @ w_k, proj @ w_q
        batch = t.q.shape[0]
        query = torch.einsum("bhe,hde->bhd", t.q, w_k)
        key = torch.einsum("bphe,hde->bphd", t.k, w_q).reshape(batch, -1, w_q.shape[1])
        return torch.cat([query, key], dim=1)

    @staticmethod
    def _low_rank_gram(g: Float[Tensor, "batch pos head k"]) -> Float[Tensor, "batch r r"]:
        """``G = Σ_s W_s W_sᵀ`` for ``U`` ordered as in :meth:`_vectors`: the query-side rows
        pair with ``g_hs`` at every s, the key-side rows with ``g_hr`` at s = L only."""
        batch, n_pos, heads, _ = g.shape
        flat = g.reshape(batch, n_pos * heads, -1)
        key_key = flat @ flat.transpose(1, 2)
        blocks = key_key.view(batch, n_pos, heads, n_pos, heads)
        query_query = blocks.diagonal(dim1=1, dim2=3).sum(-1)
        query_key = blocks[:, -1].reshape(batch, heads, -1)
        top = torch.cat([query_query, query_key], 2)
        return torch.cat([top, torch.cat([query_key.transpose(1, 2), key_key], 2)], 1)

    def _row_bytes(self, n_pos: int, k: int, k_in: int = 0) -> int:
        """Bytes per sample of the largest intermediates (``g``, codes; for edges ``A``)."""
        return 8 * (
            n_pos * self.n_heads * (k + 4 * (self.n_heads + 1) * self.d_head) + 2 * k_in * k
        )

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos d"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "d d"]:
        x_all = acts.to(F64)
        d = x_all.shape[-1]
        n_mats = self._outputs(_identity_if_none(c_out, d, x_all))
        heads1, _, k_out = n_mats.shape
        pattern_gram = x_all.new_zeros(heads1, heads1)
        # T_h in head space: (g, k, h, side, e) with side 0 the query-side u = q_g W_K^gᵀ
        # (paired with g_gs at every s) and side 1 the key-side u = k_gs W_Q^gᵀ (s = L only).
        cross = x_all.new_zeros(self.n_heads, k_out, heads1, 2, self.d_head)
        low_rank = x_all.new_zeros(d, d)
        for b0, b1 in _chunks(x_all.shape[0], self._row_bytes(x_all.shape[1], k_out)):
            t = self._terms(x_all[b0:b1], n_mats, points)
            pattern_gram += torch.einsum("bsh,bsg->hg", t.a, t.a)
            query = torch.einsum("bsh,bge->bsghe", t.a, t.q)
            key = torch.einsum("bh,bsge->bsghe", t.a[:, -1], t.k)
            codes = torch.stack([query, key], -2)  # (b, s, g, h, side, e)
            cross += torch.einsum("bsgk,bsghte->gkhte", t.g, codes)
            u = self._vectors(t)
            low_rank += u.reshape(-1, d).T @ (self._low_rank_gram(t.g) @ u).reshape(-1, d)
        heads_d = torch.einsum("gkhe,gde->hkd", cross[..., 0, :], self._k) + torch.einsum(
            "gkhe,gde->hkd", cross[..., 1, :], self._q
        )
        dense = torch.einsum("hg,hdk,gek->de", pattern_gram, n_mats, n_mats)
        mixed = torch.einsum("hdk,hke->de", n_mats, heads_d)
        return dense + mixed + mixed.T + low_rank

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos d"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        x_all, f_all, pinv = recon.to(F64), feats.to(F64), c_in_pinv.to(F64)
        n_mats = self._outputs(_identity_if_none(c_out, x_all.shape[-1], x_all))
        # (k_in, 1 + heads, k_out): C⁺N_h, laid out for one matmul per input feature j.
        feature_mats = (pinv @ n_mats).permute(1, 0, 2)
        k_in, _, k_out = feature_mats.shape
        edges = x_all.new_zeros(k_in, k_out)
        row = self._row_bytes(x_all.shape[1], k_out, k_in)
        for b0, b1 in _chunks(x_all.shape[0], row):
            t = self._terms(x_all[b0:b1], n_mats, points)
            f = f_all[b0:b1]
            batch, n_pos, heads, _ = t.g.shape
            u = self._vectors(t, pinv)  # (b, r, k_in): C⁺Uᵀ, transposed
            # Σ_s diag(f_s) C⁺Uᵀ W_s: query side of rank (s, h), key side (r, h) at s = L.
            left_q = (u[:, None, :heads] * f[:, :, None]).flatten(1, 2)
            left_k = u[:, heads:] * f[:, -1:]
            left = torch.cat([left_q, left_k], 1).transpose(1, 2)
            flat_g = t.g.reshape(batch, -1, k_out)
            a = torch.bmm(left, torch.cat([flat_g, flat_g], 1))
            weights = torch.einsum("bsj,bsh->jbh", f, t.a)
            a += torch.bmm(weights, feature_mats).transpose(0, 1)  # Σ_h diag(f·a_h) C⁺N_h
            edges += a.square_().sum(0)
        return edges.T


# --- per-token sections (language models) ------------------------------------------------------


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
        self, x: Float[Tensor, "rows d_in"], c_out: Tensor | None, points: Points
    ) -> Float[Tensor, "rows d_in k_out"]:
        jac = self.jacobians(x, points)
        return jac if c_out is None else jac @ c_out.to(F64)

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
        if draws is None:
            return self._m_dash_exact(acts, c_out, points)
        assert draws.draws is not None  # drawn for every stochastic kind
        if draws.kind == "pos":
            return self._m_dash_exact(acts, c_out, points) * draws.draws.shape[0]
        return self._m_dash_from_rows(acts, c_out, points, draws)

    def _m_dash_exact(
        self,
        acts: Float[Tensor, "batch pos d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "d_in d_in"]:
        return self._m_dash_from_rows(acts, c_out, points, None)

    def _m_dash_from_rows(
        self,
        acts: Float[Tensor, "batch pos d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None,
    ) -> Float[Tensor, "d_in d_in"]:
        """``Σ_t R_t R_tᵀ`` from the rows, or with hidden sources their signed sums."""
        batch, n_pos, d_in = acts.shape
        d_out = self.fn(acts[:1, :1]).shape[-1]
        k_out = d_out if c_out is None else c_out.shape[1]
        m = acts.new_zeros(d_in, d_in, dtype=F64)
        for b0, b1 in _chunks(batch, n_pos * self._row_bytes(d_in, d_out, k_out)):
            r = self._out_rows(acts[b0:b1].reshape(-1, d_in), c_out, points)  # (b·s, d_in, k)
            if draws is not None:
                assert draws.draws is not None  # drawn for every stochastic kind
                r = r.view(b1 - b0, n_pos, d_in, k_out)
                if draws.kind == "hidden":  # (r, s, b, k)
                    signs = _signs(draws.draws[:, :, b0:b1]).to(r.device)
                    r = torch.einsum("bsdk,rsbk->bsdr", r, signs)
                else:  # both: (q, b, s, k)
                    signs = _signs(draws.draws[:, b0:b1]).to(r.device)
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
        if draws is None:
            return self._edges_exact(recon, feats, c_in_pinv, c_out, points)
        return self._edges_from_rows(recon, feats, c_in_pinv, c_out, points, draws)

    def _edges_exact(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        return self._edges_from_rows(recon, feats, c_in_pinv, c_out, points, None)

    def _edges_from_rows(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None,
    ) -> Float[Tensor, "k_out k_in"]:
        batch, n_pos, d_in = recon.shape
        k_in = c_in_pinv.shape[0]
        d_out = self.fn(recon[:1, :1]).shape[-1]
        k_out = d_out if c_out is None else c_out.shape[1]
        pinv = c_in_pinv.to(F64)
        edges = recon.new_zeros(k_in, k_out, dtype=F64)
        row = n_pos * (self._row_bytes(d_in, d_out, k_out) + 16 * k_in * k_out)
        for b0, b1 in _chunks(batch, row):
            x = recon[b0:b1].reshape(-1, d_in)
            a = pinv @ self._out_rows(x, c_out, points)  # (b·s, k_in, k_out)
            a *= feats[b0:b1].reshape(-1, k_in, 1).to(F64)
            if draws is not None:  # positions: (r, i, b, t)
                assert draws.draws is not None  # drawn for every stochastic kind
                signs = _signs(draws.draws[:, :, b0:b1]).to(a.device)
                a = torch.einsum("btji,ribt->brji", a.view(b1 - b0, n_pos, k_in, k_out), signs)
            edges += a.square_().sum(dim=tuple(range(a.ndim - 2)))
        return edges.T


def _signs(draws: Tensor) -> Tensor:
    """Boolean draws (True: +1) as float64 ±1."""
    return draws.to(F64) * 2 - 1


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """GPT-NeoX rotary on the first ``rotary_dim`` features of the last axis; ``cos``/``sin``
    broadcast against ``x``. ``rotate(x, cos, -sin)`` is the transposed (inverse) rotation."""
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat([out, x_pass.expand(*out.shape[:-1], x_pass.shape[-1])], dim=-1)


class _PairTerms(NamedTuple):
    """Per chunk of samples, the pieces of ``J̄_{t,s}`` (see :class:`CausalAttention`):
    ``a`` (batch, head, t, s) integrated patterns, ``g`` (batch, head, t, s, k_out) the
    integrated softmax partners ``c Σ_α w_α α² A_ts(α) (v_s W_O − z_t(α)) C``, ``beta``
    (batch, t, s, head, d_head) key-side codes ``rot_sᵀ q_t`` and ``gamma_sum`` (batch, head,
    t, d_head, k_out) the query-side ``Γ_t = Σ_r rot_tᵀ(k_r) ⊗ g_tr``."""

    a: Tensor
    g: Tensor
    beta: Tensor
    gamma_sum: Tensor


class CausalAttention:
    """Masked multi-head self-attention over every position plus the residual, on the input
    ``(n, x)`` (the normalised residual with its constant, and the residual):
    ``y_t = x_t + Σ_h Σ_s A^h_ts v^h_s W_O^h`` with ``A^h_t = softmax_s(c q^h_t · k^h_s)`` over
    the mask (causal; GPT-Neo's local layers: a window), ``q = rot(n W_Q)``, ``k = rot(n W_K)``
    (rotary for GPT-NeoX, else none), ``v = n W_V``. ``keep_input`` also passes ``x`` on
    (parallel blocks: output ``(y, x)``).

    Differentiating (row vectors, at ``α (n, x)``: q, k and v scale with α, the scores with
    α²), the Jacobian of ``y_t`` with respect to ``n_s`` is, with ``M_h = W_V^h W_O^h``,
    ``J_ts = Σ_h A_ts M_h + Σ_h W_K^h (rot_sᵀ q_t) ⊗ G_ts + δ_ts Σ_h W_Q^h Σ_r (rot_tᵀ k_r) ⊗ G_tr``
    with ``G_tr = c α² A_tr (v_r W_O − Σ_r' A_tr' v_r' W_O)``; with respect to ``x_s`` it is
    ``δ_ts I``. Only ``A`` and ``G`` depend on α, so the integration rule sums them. With
    ``N_h = M_h C`` and ``U = [W_K | W_Q]`` the part on ``n`` is
    ``R_ts = Σ_h Ā_ts N_h + U Z_ts``, ``Z_ts = [β_ts ⊗ ḡ_ts (per head); δ_ts Γ_t]``, and

    - ``Σ R Rᵀ = Σ_{h,g} (Σ Ā^h Ā^g) N_h N_gᵀ + Σ_h N_h (Σ Ā^h Zᵀ) Uᵀ + (…)ᵀ + U (Σ Z Zᵀ) Uᵀ``,
      where the sums over pairs use the rank-1 structure of ``Z`` (scalar products of the
      ``ḡ``, weighted outer products of the ``d_head``-sized codes): no ``d × k`` matrix per
      pair is formed;
    - the edges take ``A_t = Σ_s diag(f̂_s) C⁺_n R_ts + diag(f̂_t) C⁺_x E`` per position, from the
      same pieces.

    Exact sources and stochastic ones over positions (the LM configs' setting); sources over
    hidden dimensions take the generic path.
    """

    #: The kinds of stochastic sources whose draws ``jacobians`` passes to this closed form.
    takes_sources = ("pos",)

    def __init__(
        self,
        attention: Callable[[Tensor], Tensor],
        w_q: Float[Tensor, "dn heads_dh"],
        w_k: Float[Tensor, "dn heads_dh"],
        w_v: Float[Tensor, "dn heads_dv"],
        w_o: Float[Tensor, "heads_dv d"],
        mask: Bool[Tensor, "ctx ctx"],
        scale: float,
        n_heads: int,
        rotary: tuple[Tensor, Tensor] | None = None,
        keep_input: bool = False,
    ):
        self.attention, self.keep_input = attention, keep_input
        self.mask, self.scale, self.n_heads, self.rotary = mask, scale, n_heads, rotary
        dn = w_q.shape[0]
        self.dn, self.d_head = dn, w_q.shape[1] // n_heads
        self.w_q, self.w_k = w_q.to(F64), w_k.to(F64)
        v = w_v.to(F64).view(dn, n_heads, -1).permute(1, 0, 2)  # (h, dn, dv)
        self._w_o = w_o.to(F64).view(n_heads, v.shape[-1], -1)  # (h, dv, d)
        self._w_v = v
        self._m = v @ self._w_o  # (h, dn, d)

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether one sample's pair terms (``H P² d`` floats and a few more; the output
        feature count is at most ``2d``) stay within ``MAX_SAMPLE_BYTES``. Beyond that (e.g.
        GPT-2 small: 1024 positions, about 90 GB) the generic path runs, until the pairs are
        chunked over query positions."""
        n_pos, width = shape[1], shape[2]
        d = width - self.dn
        heads = self.n_heads
        pairs = n_pos * n_pos * heads * (2 * d + 3 * self.d_head + 2)
        sources = n_pos * (2 * d) ** 2  # ζ of one position source
        return 8 * (pairs + sources) <= MAX_SAMPLE_BYTES

    def __call__(self, h: Float[Tensor, "batch pos width"]) -> Float[Tensor, "batch pos out"]:
        x = h[..., self.dn :]
        y = x + self.attention(h[..., : self.dn])
        return torch.cat([y, x], dim=-1) if self.keep_input else y

    def _c_y_and_e(self, c_out: Tensor | None, d: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``C`` on ``y`` and ``E``, the residual's path (``C_y``, plus ``C_x`` if kept)."""
        c = _identity_if_none(c_out, 2 * d if self.keep_input else d, like)
        return (c[:d], c[:d] + c[d:]) if self.keep_input else (c, c)

    def _terms(self, n: Float[Tensor, "batch pos dn"], c_y: Tensor, points: Points) -> _PairTerms:
        batch, n_pos, _ = n.shape
        heads, dh = self.n_heads, self.d_head
        q = (n @ self.w_q).view(batch, n_pos, heads, dh)
        k = (n @ self.w_k).view(batch, n_pos, heads, dh)
        if self.rotary is None:
            beta, gamma = q[:, :, None].expand(batch, n_pos, n_pos, heads, dh), None
        else:
            cos, sin = (r[:n_pos].to(F64)[:, None] for r in self.rotary)  # (pos, 1, rot)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            # β_ts = rot_sᵀ q_t, γ_tr = rot_tᵀ k_r
            beta = rotate(q[:, :, None], cos[None], -sin[None])
            gamma = rotate(k[:, None], cos[:, None], -sin[:, None])
        scores = torch.einsum("bthe,bshe->bhts", q, k) * self.scale
        mask = self.mask[:n_pos, :n_pos].to(n.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        v = torch.einsum("bsd,hde->bhse", n, self._w_v)
        y = torch.einsum("bhse,hek->bhsk", v, self._w_o @ c_y)  # v_s W_O C per head
        a = g = None
        for alpha, weight in zip(*points, strict=True):
            pattern = (alpha**2 * scores).softmax(dim=-1)
            z = pattern @ y  # (b, h, t, k)
            term = y[:, :, None] - z[:, :, :, None]
            term *= pattern[..., None] * (self.scale * weight * alpha**2)
            g = term if g is None else g.add_(term)
            a = weight * pattern if a is None else a.add_(pattern, alpha=weight)
        assert a is not None and g is not None  # an integration rule has points
        if gamma is None:  # γ_tr = k_r for every t; matmul reads g in place (einsum copies it)
            gamma_sum = k.permute(0, 2, 3, 1)[:, :, None] @ g
        else:
            gamma_sum = torch.einsum("btrhe,bhtrk->bhtek", gamma, g)
        return _PairTerms(a, g, beta, gamma_sum)

    def _row_bytes(self, n_pos: int, k: int, k_in: int = 0) -> int:
        heads, dh = self.n_heads, self.d_head
        return (
            8
            * n_pos
            * (n_pos * heads * (3 * k + 3 * dh + 2) + heads * dh * k + 2 * k_in * k + n_pos * k_in)
        )

    def compute_m_dash_sum(
        self,
        acts: Float[Tensor, "batch pos width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "width width"]:
        if draws is not None:
            if draws.kind != "pos":
                raise NotImplementedError("attention takes position sources only")
            return self._m_dash_position_sources(acts, c_out, points, draws)
        x_all = acts.to(F64)
        batch, n_pos, width = x_all.shape
        dn, heads, dh = self.dn, self.n_heads, self.d_head
        d = width - dn
        c_y, e = self._c_y_and_e(c_out, d, x_all)
        k_out = c_y.shape[1]
        pattern_gram = x_all.new_zeros(heads, heads)
        cross = x_all.new_zeros(heads, k_out, 2, heads, dh)  # Σ Ā^h Zᵀ: (h, k, K/Q, g, e)
        low = x_all.new_zeros(2, heads, dh, 2, heads, dh)  # Σ Z Zᵀ
        diag_a = x_all.new_zeros(heads)
        diag_z = x_all.new_zeros(2, heads, dh, k_out)  # Σ_t Z_tt
        for b0, b1 in _chunks(batch, self._row_bytes(n_pos, k_out)):
            t = self._terms(x_all[b0:b1, :, :dn], c_y, points)
            pattern_gram += torch.einsum("bhts,bgts->hg", t.a, t.a)
            a_diag = t.a.diagonal(dim1=2, dim2=3)  # (b, h, t)
            g_diag = t.g.diagonal(dim1=2, dim2=3)  # (b, h, k, t)
            beta_diag = t.beta.diagonal(dim1=1, dim2=2)  # (b, h, e, t)
            if self.rotary is None:
                self._key_terms_unrotated(t, cross, low)
            else:
                products = torch.einsum("bhtsk,bgtsk->bhgts", t.g, t.g)
                for h in range(heads):
                    weighted = t.a[:, h, None, :, :, None] * t.g  # (b, g, t, s, k)
                    cross[h, :, 0] += torch.einsum("bgtsk,btsge->kge", weighted, t.beta)
                    scaled = products[:, h, :, :, :, None] * t.beta.permute(0, 3, 1, 2, 4)
                    low[0, h, :, 0] += torch.einsum("btse,bgtsf->egf", t.beta[..., h, :], scaled)
            # Γ laid out as ((g, e), (b, t), k) once: matmuls read it in place, einsum would
            # copy it for every product.
            flat = t.gamma_sum.permute(1, 3, 0, 2, 4).reshape(heads * dh, -1)
            low[1, :, :, 1] += (flat @ flat.T).view(heads, dh, heads, dh)
            a_flat = a_diag.permute(1, 0, 2).reshape(heads, -1)  # (h, (b, t))
            a_gamma = a_flat @ flat.view(heads * dh, a_flat.shape[1], k_out)  # ((g, e), h, k)
            cross[:, :, 1] += a_gamma.view(heads, dh, heads, k_out).permute(2, 3, 0, 1)
            # Σ_k Γ^g_t[f, k] ḡ^h_tt[k] as (b, g, t, f, h), then against β^h_tt
            key_query = t.gamma_sum @ g_diag.permute(0, 3, 2, 1)[:, None]
            kq = torch.einsum("bhet,bgtfh->hegf", beta_diag, key_query)
            low[0, :, :, 1] += kq
            low[1, :, :, 0] += kq.permute(2, 3, 0, 1)
            diag_a += a_diag.sum((0, 2))
            diag_z[0] += torch.einsum("bhet,bhkt->hek", beta_diag, g_diag)
            diag_z[1] += t.gamma_sum.sum((0, 2))
        n_mats = self._m @ c_y  # (h, dn, k)
        u = torch.stack([self.w_k, self.w_q]).view(2, dn, heads, dh)  # (K/Q, dn, g, e)
        dense = torch.einsum("hg,hdk,gek->de", pattern_gram, n_mats, n_mats)
        mixed = torch.einsum("hdk,hkcge,cmge->dm", n_mats, cross, u)
        low_rank = torch.einsum("chedgf,cmhe,dngf->mn", low, u, u)
        m = x_all.new_zeros(width, width)
        m[:dn, :dn] = dense + mixed + mixed.T + low_rank
        r_diag = torch.einsum("h,hdk->dk", diag_a, n_mats) + torch.einsum(
            "chek,cmhe->mk", diag_z, u
        )
        m[:dn, dn:] = r_diag @ e.T
        m[dn:, :dn] = m[:dn, dn:].T
        m[dn:, dn:] = (batch * n_pos) * (e @ e.T)
        return m

    @staticmethod
    def _key_terms_unrotated(t: _PairTerms, cross: Tensor, low: Tensor) -> None:
        """The key-side parts of ``Σ Ā^h Zᵀ`` and ``Σ Z Zᵀ`` without rotary: ``β_ts = q_t`` for
        every ``s``, so the sums over ``s`` come first and cost ``O(H² P² k)`` per sample
        instead of ``O(H² P² k d_head)``."""
        q = t.beta[:, :, 0]  # (b, t, h, e)
        g = t.g.transpose(1, 2)  # (b, t, h, s, k)
        summed = t.a.transpose(1, 2)[:, None] @ t.g  # (b, g, t, h, k): Σ_s Ā^h ḡ^g
        cross[:, :, 0] += torch.einsum("bgthk,btge->hkge", summed, q)
        flat = g.reshape(*g.shape[:3], -1)
        dots = flat @ flat.transpose(-1, -2)  # (b, t, h, g): Σ_s ḡ^h_ts · ḡ^g_ts
        low[0, :, :, 0] += torch.einsum("bthe,bthgf->hegf", q, dots[..., None] * q[:, :, None])

    def _m_dash_position_sources(
        self,
        acts: Float[Tensor, "batch pos width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws,
    ) -> Float[Tensor, "width width"]:
        """M′ with position sources: the row of source ``r`` and output feature ``i`` at ``s``
        is ``Σ_t φ_rit R_ts[:, i] = Σ_h Ã^h_ris N_h[:, i] + U ζ_ris`` (and ``φ_ris E[:, i]`` on
        ``x``) with ``Ã_ris = Σ_t φ_rit Ā_ts`` and
        ``ζ_ris = [Σ_t φ_rit ḡ_tsi β_ts; φ_ris Γ_s[:, i]]``: the signs mix output positions per
        feature, so ``ζ`` is formed per (r, i, s)."""
        x_all = acts.to(F64)
        batch, n_pos, width = x_all.shape
        dn, heads, dh = self.dn, self.n_heads, self.d_head
        c_y, e = self._c_y_and_e(c_out, width - dn, x_all)
        assert draws.draws is not None  # drawn for every stochastic kind
        k_out, n_src = c_y.shape[1], draws.draws.shape[0]
        pattern_gram = x_all.new_zeros(heads, heads, k_out)
        cross = x_all.new_zeros(heads, k_out, 2 * heads * dh)
        low = x_all.new_zeros(2 * heads * dh, 2 * heads * dh)
        col_a = x_all.new_zeros(heads, k_out)
        col_z = x_all.new_zeros(2 * heads * dh, k_out)
        row = self._row_bytes(n_pos, k_out) + 8 * n_src * k_out * n_pos * (2 * heads * dh + heads)
        for b0, b1 in _chunks(batch, row):
            t = self._terms(x_all[b0:b1, :, :dn], c_y, points)
            phi = _signs(draws.draws[:, :, b0:b1]).to(x_all.device).permute(2, 0, 1, 3)
            a_src = torch.einsum("brit,bhts->brish", phi, t.a)
            z_key = torch.einsum("brit,bhtsi,btshe->brishe", phi, t.g, t.beta)
            z_query = torch.einsum("bris,bhsei->brishe", phi, t.gamma_sum)
            zeta = torch.stack([z_key, z_query], dim=4).flatten(4)  # (b, r, i, s, 2·h·e)
            pattern_gram += torch.einsum("brish,brisg->hgi", a_src, a_src)
            cross += torch.einsum("brish,brisz->hiz", a_src, zeta)
            flat = zeta.reshape(-1, zeta.shape[-1])
            low += flat.T @ flat
            col_a += torch.einsum("bris,brish->hi", phi, a_src)
            col_z += torch.einsum("bris,brisz->zi", phi, zeta)
        n_mats = self._m @ c_y  # (h, dn, k)
        u = torch.stack([self.w_k, self.w_q]).view(2, dn, heads, dh)
        u = u.permute(1, 0, 2, 3).reshape(dn, -1)  # (dn, (K/Q, g, e))
        dense = torch.einsum("hgi,hdi,gei->de", pattern_gram, n_mats, n_mats)
        mixed = torch.einsum("hdi,hiz,mz->dm", n_mats, cross, u)
        m = x_all.new_zeros(width, width)
        m[:dn, :dn] = dense + mixed + mixed.T + u @ low @ u.T
        columns = torch.einsum("hdi,hi->di", n_mats, col_a) + u @ col_z
        m[:dn, dn:] = columns @ e.T
        m[dn:, :dn] = m[:dn, dn:].T
        m[dn:, dn:] = (batch * n_pos * n_src) * (e @ e.T)
        return m

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos width"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "k_out k_in"]:
        x_all, f_all, pinv = recon.to(F64), feats.to(F64), c_in_pinv.to(F64)
        batch, n_pos, width = x_all.shape
        dn, heads, dh = self.dn, self.n_heads, self.d_head
        c_y, e = self._c_y_and_e(c_out, width - dn, x_all)
        k_in, k_out = pinv.shape[0], c_y.shape[1]
        p_n = pinv[:, :dn]
        feature_mats = p_n @ (self._m @ c_y)  # (h, k_in, k): C⁺_n N_h
        key_feats = (p_n @ self.w_k).view(k_in, heads, dh)
        query_feats = (p_n @ self.w_q).view(k_in, heads, dh)
        residual = pinv[:, dn:] @ e  # (k_in, k)
        edges = x_all.new_zeros(k_in, k_out)
        for b0, b1 in _chunks(batch, self._row_bytes(n_pos, k_out, k_in)):
            t = self._terms(x_all[b0:b1, :, :dn], c_y, points)
            f = f_all[b0:b1]
            b = b1 - b0
            weights = torch.einsum("bhts,bsj->bthj", t.a, f)
            a = torch.einsum("bthj,hjk->btjk", weights, feature_mats)
            kappa = torch.einsum("btshe,jhe->btshj", t.beta, key_feats) * f[:, None, :, None]
            g = t.g.permute(0, 2, 3, 1, 4).reshape(b * n_pos, n_pos * heads, k_out)
            a += torch.bmm(kappa.reshape(b * n_pos, n_pos * heads, k_in).transpose(1, 2), g).view(
                b, n_pos, k_in, k_out
            )
            own = torch.einsum("jhe,bhtek->btjk", query_feats, t.gamma_sum) + residual
            a += f[..., None] * own
            if draws is not None:  # position sources: (r, k, b, t)
                assert draws.draws is not None  # drawn for every stochastic kind
                signs = _signs(draws.draws[:, :, b0:b1]).to(a.device)
                a = torch.einsum("btjk,rkbt->brjk", a, signs)
            edges += a.square_().sum((0, 1))
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
        self, x: Float[Tensor, "rows width"], c_out: Tensor | None, points: Points
    ) -> Float[Tensor, "rows width k_out"]:
        c, p = self.mlp._out_side(c_out, x)
        slopes = self.mlp._slopes(x[:, : self.dn].to(F64), points)
        r_n = (self.mlp.w_in.to(F64) * slopes[:, None, :]) @ p
        return torch.cat([r_n, c.expand(x.shape[0], *c.shape)], dim=1)

    def _m_dash_exact(
        self,
        acts: Float[Tensor, "batch pos width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "width width"]:
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        dn = self.dn
        w_in = self.mlp.w_in.to(F64)
        c, p = self.mlp._out_side(c_out, x)
        slopes = self.mlp._slopes(x[:, :dn], points)
        m = x.new_zeros(x.shape[1], x.shape[1])
        m[:dn, :dn] = w_in @ ((p @ p.T) * (slopes.T @ slopes)) @ w_in.T
        m[:dn, dn:] = (w_in * slopes.sum(0)) @ p @ c.T
        m[dn:, :dn] = m[:dn, dn:].T
        m[dn:, dn:] = x.shape[0] * (c @ c.T)
        return m


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
        self,
        acts: Float[Tensor, "batch pos width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "width width"]:
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        c = _identity_if_none(c_out, x.shape[1] + 1, x)
        c0, c_x = c[0], c[1:]
        g = self._gradients(x, points)
        cross = g.sum(0)[:, None] * (c_x @ c0)[None, :]
        return (c0 @ c0) * (g.T @ g) + cross + cross.T + x.shape[0] * (c_x @ c_x.T)

    def _edges_exact(
        self,
        recon: Float[Tensor, "batch pos width"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        x = recon.reshape(-1, recon.shape[-1]).to(F64)
        f2 = feats.reshape(-1, feats.shape[-1]).to(F64).square()
        pinv = c_in_pinv.to(F64)
        c = _identity_if_none(c_out, x.shape[1] + 1, x)
        c0, q = c[0], pinv @ c[1:]
        pg = self._gradients(x, points) @ pinv.T  # (rows, k_in): C⁺ḡ per token
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

    def _pieces(self, x: Float[Tensor, "rows width"], c_out: Tensor | None, points: Points):
        d, big = self.d, self.d + 1
        width = x.shape[1]
        d_out = big + (0 if self.passthrough is None else width - self.passthrough)
        c = _identity_if_none(c_out, d_out, x)
        var = x[:, 0]
        kappa, s_bar = torch.zeros_like(var), torch.zeros_like(var)
        for alpha, weight in zip(*points, strict=True):
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
        self, x: Float[Tensor, "rows width"], c_out: Tensor | None, points: Points
    ) -> Float[Tensor, "rows width k_out"]:
        t = self._pieces(x.to(F64), c_out, points)
        rows = t.s_bar[:, None, None] * t.q + t.b
        rows[:, 0] = t.kappa[:, None] * t.a
        return rows

    def _m_dash_exact(
        self,
        acts: Float[Tensor, "batch pos width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "width width"]:
        x = acts.reshape(-1, acts.shape[-1]).to(F64)
        t = self._pieces(x, c_out, points)
        ka = t.kappa[:, None] * t.a
        first = (t.s_bar @ ka) @ t.q.T + ka.sum(0) @ t.b.T
        qb = t.q @ t.b.T
        m = t.s_bar.square().sum() * (t.q @ t.q.T) + t.s_bar.sum() * (qb + qb.T)
        m += x.shape[0] * (t.b @ t.b.T)
        m[0] += first
        m[:, 0] += first
        m[0, 0] += ka.square().sum()
        return m

    def _edges_exact(
        self,
        recon: Float[Tensor, "batch pos width"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        x = recon.reshape(-1, recon.shape[-1]).to(F64)
        f2 = feats.reshape(-1, feats.shape[-1]).to(F64).square()
        pinv = c_in_pinv.to(F64)
        t = self._pieces(x, c_out, points)
        k = t.a.shape[1]
        ka = t.kappa[:, None] * t.a
        sums = f2.T @ torch.cat([ka.square(), t.s_bar[:, None] * ka, ka], dim=1)
        s_aa, s_qa, s_ba = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
        s0, s1, s2 = f2.sum(0)[:, None], (f2.T @ t.s_bar)[:, None], (f2.T @ t.s_bar.square())
        p0, q, b = pinv[:, :1], pinv @ t.q, pinv @ t.b
        edges = p0.square() * s_aa + 2 * p0 * (q * s_qa + b * s_ba)
        edges += q.square() * s2[:, None] + 2 * (q * b) * s1 + b.square() * s0
        return edges.T
