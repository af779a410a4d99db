"""Closed form of the language models' attention block: :class:`CausalAttention`, masked
multi-head self-attention over every position plus the residual (with ``rotate``, the rotary
embedding of GPT-NeoX)."""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interaction_basis.lib.closed_form.common import (
    F64,
    Contraction,
    Points,
    as_signs,
    chunks,
    identity_if_none,
)
from interaction_basis.lib.jacobians import SourceDraws

#: Largest working set of one sample a closed form takes on (attention's pair terms).
MAX_SAMPLE_BYTES = 2 * 2**30


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
        c = identity_if_none(c_out, 2 * d if self.keep_input else d, like)
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
        out = Contraction(c_out, points)
        if draws is None:
            return self._m_dash_exact(acts, out)
        if draws.kind != "pos":
            raise NotImplementedError("attention takes position sources only")
        return self._m_dash_position_sources(acts, out, draws)

    def _m_dash_exact(
        self, acts: Float[Tensor, "batch pos width"], out: Contraction
    ) -> Float[Tensor, "width width"]:
        x_all = acts.to(F64)
        batch, n_pos, width = x_all.shape
        dn, heads, dh = self.dn, self.n_heads, self.d_head
        d = width - dn
        c_y, e = self._c_y_and_e(out.c_out, d, x_all)
        k_out = c_y.shape[1]
        pattern_gram = x_all.new_zeros(heads, heads)
        cross = x_all.new_zeros(heads, k_out, 2, heads, dh)  # Σ Ā^h Zᵀ: (h, k, K/Q, g, e)
        low = x_all.new_zeros(2, heads, dh, 2, heads, dh)  # Σ Z Zᵀ
        diag_a = x_all.new_zeros(heads)
        diag_z = x_all.new_zeros(2, heads, dh, k_out)  # Σ_t Z_tt
        for b0, b1 in chunks(batch, self._row_bytes(n_pos, k_out)):
            t = self._terms(x_all[b0:b1, :, :dn], c_y, out.points)
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
        self, acts: Float[Tensor, "batch pos width"], out: Contraction, draws: SourceDraws
    ) -> Float[Tensor, "width width"]:
        """M′ with position sources: the row of source ``r`` and output feature ``i`` at ``s``
        is ``Σ_t φ_rit R_ts[:, i] = Σ_h Ã^h_ris N_h[:, i] + U ζ_ris`` (and ``φ_ris E[:, i]`` on
        ``x``) with ``Ã_ris = Σ_t φ_rit Ā_ts`` and
        ``ζ_ris = [Σ_t φ_rit ḡ_tsi β_ts; φ_ris Γ_s[:, i]]``: the signs mix output positions per
        feature, so ``ζ`` is formed per (r, i, s)."""
        x_all = acts.to(F64)
        batch, n_pos, width = x_all.shape
        dn, heads, dh = self.dn, self.n_heads, self.d_head
        c_y, e = self._c_y_and_e(out.c_out, width - dn, x_all)
        assert draws.draws is not None  # drawn for every stochastic kind
        k_out, n_src = c_y.shape[1], draws.draws.shape[0]
        pattern_gram = x_all.new_zeros(heads, heads, k_out)
        cross = x_all.new_zeros(heads, k_out, 2 * heads * dh)
        low = x_all.new_zeros(2 * heads * dh, 2 * heads * dh)
        col_a = x_all.new_zeros(heads, k_out)
        col_z = x_all.new_zeros(2 * heads * dh, k_out)
        row = self._row_bytes(n_pos, k_out) + 8 * n_src * k_out * n_pos * (2 * heads * dh + heads)
        for b0, b1 in chunks(batch, row):
            t = self._terms(x_all[b0:b1, :, :dn], c_y, out.points)
            phi = as_signs(draws.draws[:, :, b0:b1]).to(x_all.device).permute(2, 0, 1, 3)
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
        for b0, b1 in chunks(batch, self._row_bytes(n_pos, k_out, k_in)):
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
                signs = as_signs(draws.draws[:, :, b0:b1]).to(a.device)
                a = torch.einsum("btjk,rkbt->brjk", a, signs)
            edges += a.square_().sum((0, 1))
        return edges.T
