"""Closed form of the mod-add transformer's attention block: :class:`LastPositionAttention`,
multi-head attention of the last position over all positions, plus its residual."""

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.closed_form.common import F64, Points, chunks, identity_if_none


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
        n_mats = self._outputs(identity_if_none(c_out, d, x_all))
        heads1, _, k_out = n_mats.shape
        pattern_gram = x_all.new_zeros(heads1, heads1)
        # T_h in head space: (g, k, h, side, e) with side 0 the query-side u = q_g W_K^gᵀ
        # (paired with g_gs at every s) and side 1 the key-side u = k_gs W_Q^gᵀ (s = L only).
        cross = x_all.new_zeros(self.n_heads, k_out, heads1, 2, self.d_head)
        low_rank = x_all.new_zeros(d, d)
        for b0, b1 in chunks(x_all.shape[0], self._row_bytes(x_all.shape[1], k_out)):
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
        n_mats = self._outputs(identity_if_none(c_out, x_all.shape[-1], x_all))
        # (k_in, 1 + heads, k_out): C⁺N_h, laid out for one matmul per input feature j.
        feature_mats = (pinv @ n_mats).permute(1, 0, 2)
        k_in, _, k_out = feature_mats.shape
        edges = x_all.new_zeros(k_in, k_out)
        row = self._row_bytes(x_all.shape[1], k_out, k_in)
        for b0, b1 in chunks(x_all.shape[0], row):
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
