"""Closed form of the language models' attention block: :class:`CausalAttention`, masked
multi-head self-attention over every position plus the residual (with ``rotate``, the rotary
embedding of GPT-NeoX)."""

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interaction_basis.lib.budget import budget_bytes
from interaction_basis.lib.closed_form.common import (
    F64,
    Contraction,
    Points,
    as_signs,
    identity_if_none,
)
from interaction_basis.lib.jacobians import SourceDraws


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """GPT-NeoX rotary on the first ``rotary_dim`` features of the last axis; ``cos``/``sin``
    broadcast against ``x``. ``rotate(x, cos, -sin)`` is the transposed (inverse) rotation."""
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat([out, x_pass.expand(*out.shape[:-1], x_pass.shape[-1])], dim=-1)


class _Projected(NamedTuple):
    """One chunk of samples projected once: queries and keys ``(batch, pos, head, d_head)``
    (rotated where rotary), values ``(batch, head, pos, d_value)``, and the rotary ``cos`` and
    ``sin`` ``(pos, 1, rotary_dim)`` (``None`` without rotary)."""

    q: Tensor
    k: Tensor
    v: Tensor
    cos: Tensor | None
    sin: Tensor | None


class _Block(NamedTuple):
    """The pieces of ``J̄_{t,s}`` (see :class:`CausalAttention`) for queries ``t0:t1`` against
    keys ``s0:s1`` (every key those queries see, the diagonal included) and a chunk of ``I``
    output features: ``a`` (batch, head, T, S) integrated patterns, ``g`` (batch, head, T, S,
    I) the integrated softmax partners ``c Σ_α w_α α² A_ts(α) (v_s W_O − z_t(α)) C``, ``beta``
    (batch, T, S, head, d_head) key-side codes ``rot_sᵀ q_t`` (a broadcast view of ``q_t``
    without rotary) and ``gamma_sum`` (batch, head, T, d_head, I) the query-side
    ``Γ_t = Σ_r rot_tᵀ(k_r) ⊗ g_tr``; ``q`` (batch, T, head, d_head) the queries (rotated
    at ``t``)."""

    t0: int
    t1: int
    s0: int
    q: Tensor
    a: Tensor
    g: Tensor
    beta: Tensor
    gamma_sum: Tensor

    @property
    def offset(self) -> int:
        """The diagonal ``s = t`` of the (T, S) axes: ``torch.diagonal``'s offset."""
        return self.t0 - self.s0


class _Plan(NamedTuple):
    """How one call is chunked: samples per chunk, output features per chunk, and the query
    chunks ``(t0, t1, s0, s1)`` with the key range each sees."""

    samples: int
    features: int
    queries: list[tuple[int, int, int, int]]


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

    **Chunks** (method §A.8). Every sum above runs over (query, key) pairs and output features
    ``i``, and a query ``t`` needs only the keys its mask row sees. So each call goes over
    chunks of samples, of output features (columns of ``C``) and of query positions, each
    query chunk with the key range its rows see (causal: ``0:t1``; a local window: the window),
    sized so that one chunk's intermediates (``_pair_bytes`` per (sample, query, key), a few
    copies of ``g``) stay within :func:`~interaction_basis.lib.budget.budget_bytes`. The
    closed form therefore serves every context length; one query row of one sample and one
    output feature is the smallest chunk (a few ``H·P·d_head`` floats). Chunking changes only
    the order of the sums.

    Cost per sample, with ``Π`` the (query, key) pairs in the mask (``P(P+1)/2`` causal), ``k``
    the output features and ``n_α`` the integration points, in multiply-adds: the pattern and
    its partners ``n_α H Π (d_head + 2k)`` (the ``H Π d_head`` scores once per chunk of output
    features) and the query-side ``Γ`` ``H Π d_head k`` (rotary: twice); M′ exact then
    ``2 H² Π k`` for the key-side terms (rotary: ``H² Π k (2 d_head + 1)``) and ``P k d²`` for
    the Gram of ``Γ``; the edges ``H Π k_in (d_head + k)``; M′ with ``n`` position sources
    ``n H Π k d_head`` for the key half of the rows and ``(n + 2) P k d²`` for their Grams.
    Memory: the chunk within the budget, the accumulators (``d² + H k d``), and with position
    sources the key half of their rows ``n·P·I·d`` per chunk of ``I`` output features (within
    the budget too).

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
        # Per query row, the first key and one past the last its mask row sees (the diagonal
        # included), read once here: planning then needs no tensor data (it also runs on fake
        # tensors, for the benchmarks' dry runs).
        ctx = mask.shape[0]
        index = torch.arange(ctx)
        seen = mask.cpu() | torch.eye(ctx, dtype=torch.bool)
        self._first = torch.where(seen, index, ctx).min(dim=1).values.tolist()
        self._last = (torch.where(seen, index, -1).max(dim=1).values + 1).tolist()

    def __call__(self, h: Float[Tensor, "batch pos width"]) -> Float[Tensor, "batch pos out"]:
        x = h[..., self.dn :]
        y = x + self.attention(h[..., : self.dn])
        return torch.cat([y, x], dim=-1) if self.keep_input else y

    def _c_y_and_e(self, c_out: Tensor | None, d: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``C`` on ``y`` and ``E``, the residual's path (``C_y``, plus ``C_x`` if kept)."""
        c = identity_if_none(c_out, 2 * d if self.keep_input else d, like)
        return (c[:d], c[:d] + c[d:]) if self.keep_input else (c, c)

    # --- chunks ---------------------------------------------------------------------------

    def _pair_bytes(self, features: int, k_in: int = 0) -> int:
        """Bytes per (sample, query, key) of a chunk's intermediates: ``g`` and up to four
        more tensors of its size (the running sum over α, the weighted copies of the key-side
        sums), the codes ``β``/``γ`` and their products, the patterns; for the edges the
        key-side weights per input feature."""
        heads, dh = self.n_heads, self.d_head
        return 8 * heads * (5 * features + 4 * dh + heads + 6 + k_in)

    def _row_bytes(self, features: int, k_in: int = 0) -> int:
        """Bytes per (sample, query) outside the pairs: ``Γ`` and its copies; for the edges
        ``A_t`` and its pieces."""
        heads, dh = self.n_heads, self.d_head
        return 8 * (3 * heads * dh * features + 3 * k_in * features + 2 * heads * k_in)

    def _key_ranges(self, n_pos: int) -> tuple[list[int], list[int]]:
        """Per query row of the first ``n_pos``, the first key and one past the last key its
        mask row sees among the first ``n_pos`` (the diagonal included)."""
        first = self._first[:n_pos]
        last = [max(min(stop, n_pos), t + 1) for t, stop in enumerate(self._last[:n_pos])]
        return first, last

    def _plan(
        self,
        batch: int,
        n_pos: int,
        k_out: int,
        k_in: int = 0,
        kept: int = 0,
        row_extra: int = 0,
        whole: bool = False,
    ) -> _Plan:
        """The chunks of one call within the budget. ``kept``: bytes per (sample, position,
        output feature) that live through a whole chunk of output features (position sources'
        accumulators); ``row_extra``: bytes per (sample, query) beyond :meth:`_row_bytes`;
        ``whole``: never split the features. Features first (as many as one query row of one
        sample allows), then samples (as many whole-sequence chunks as fit), then query rows."""
        budget = budget_bytes()
        features = k_out
        while (
            not whole
            and features > 1
            and (
                n_pos * (self._pair_bytes(features, k_in) + kept * features)
                + self._row_bytes(features, k_in)
                > budget
            )
        ):
            features = (features + 1) // 2
        pair = self._pair_bytes(features, k_in)
        row = self._row_bytes(features, k_in) + row_extra
        first, last = self._key_ranges(n_pos)
        pairs = sum(stop - start for start, stop in zip(first, last, strict=True))
        per_sample = pairs * pair + n_pos * (row + kept * features)
        samples = max(1, min(batch, budget // max(1, per_sample)))
        room = budget - samples * n_pos * kept * features
        queries = []
        t0 = 0
        while t0 < n_pos:
            s0, s1, t1 = first[t0], last[t0], t0 + 1
            while t1 < n_pos:
                n0, n1 = min(s0, first[t1]), max(s1, last[t1])
                if samples * (t1 + 1 - t0) * ((n1 - n0) * pair + row) > room:
                    break
                s0, s1, t1 = n0, n1, t1 + 1
            queries.append((t0, t1, min(s0, t0), max(s1, t1)))
            t0 = t1
        return _Plan(samples, features, queries)

    @staticmethod
    def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
        return ((i, min(i + size, n)) for i in range(0, n, size))

    # --- pieces ---------------------------------------------------------------------------

    def _project(self, n: Float[Tensor, "batch pos dn"]) -> _Projected:
        batch, n_pos, _ = n.shape
        heads, dh = self.n_heads, self.d_head
        q = (n @ self.w_q).view(batch, n_pos, heads, dh)
        k = (n @ self.w_k).view(batch, n_pos, heads, dh)
        v = torch.einsum("bsd,hde->bhse", n, self._w_v)
        if self.rotary is None:
            return _Projected(q, k, v, None, None)
        cos, sin = (r[:n_pos].to(F64).to(n.device)[:, None] for r in self.rotary)  # (pos, 1, rot)
        return _Projected(rotate(q, cos, sin), rotate(k, cos, sin), v, cos, sin)

    def _block(
        self,
        p: _Projected,
        y: Float[Tensor, "batch head pos k"],
        points: Points,
        span: tuple[int, int, int, int],
    ) -> _Block:
        """The pieces for queries ``t0:t1`` against keys ``s0:s1``; ``y`` holds ``v_s W_O C``
        per head for the chunk's output features."""
        t0, t1, s0, s1 = span
        q, k = p.q[:, t0:t1], p.k[:, s0:s1]
        batch, n_t, heads, dh = q.shape
        if p.cos is None or p.sin is None:
            beta, gamma = q[:, :, None].expand(batch, n_t, s1 - s0, heads, dh), None
        else:
            # β_ts = rot_sᵀ q_t, γ_tr = rot_tᵀ k_r
            beta = rotate(q[:, :, None], p.cos[None, s0:s1], -p.sin[None, s0:s1])
            gamma = rotate(k[:, None], p.cos[t0:t1, None], -p.sin[t0:t1, None])
        scores = torch.einsum("bthe,bshe->bhts", q, k) * self.scale
        mask = self.mask[t0:t1, s0:s1].to(q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        y_keys = y[:, :, s0:s1]
        a = g = None
        for alpha, weight in zip(*points, strict=True):
            pattern = (alpha**2 * scores).softmax(dim=-1)
            z = pattern @ y_keys  # (b, h, t, k)
            term = y_keys[:, :, None] - z[:, :, :, None]
            term *= pattern[..., None] * (self.scale * weight * alpha**2)
            g = term if g is None else g.add_(term)
            a = weight * pattern if a is None else a.add_(pattern, alpha=weight)
        assert a is not None and g is not None  # an integration rule has points
        if gamma is None:  # γ_tr = k_r for every t; matmul reads g in place (einsum copies it)
            gamma_sum = k.permute(0, 2, 3, 1)[:, :, None] @ g
        else:
            gamma_sum = torch.einsum("btrhe,bhtrk->bhtek", gamma, g)
        return _Block(t0, t1, s0, q, a, g, beta, gamma_sum)

    def _blocks(
        self, n: Tensor, c_y: Tensor | None, points: Points, plan: _Plan
    ) -> Iterator[tuple[int, int, int, int, Iterator[_Block]]]:
        """``(b0, b1, i0, i1, blocks)`` per chunk of samples and of output features, the
        blocks being that chunk's query chunks in order. ``c_y`` None: the blocks' ``g`` and
        ``Γ`` stay in value space (their last axis the ``d_value`` of ``v``, before ``W_O C``)."""
        batch = n.shape[0]
        k_out = self._w_v.shape[-1] if c_y is None else c_y.shape[1]
        for b0, b1 in self._spans(batch, plan.samples):
            p = self._project(n[b0:b1])
            for i0, i1 in self._spans(k_out, plan.features):
                if c_y is None:
                    y = p.v[..., i0:i1]
                else:
                    y = torch.einsum("bhse,hek->bhsk", p.v, self._w_o @ c_y[:, i0:i1])
                blocks = (self._block(p, y, points, span) for span in plan.queries)
                yield b0, b1, i0, i1, blocks

    # --- M′ -------------------------------------------------------------------------------

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
        plan = self._plan(batch, n_pos, k_out)
        for _, _, i0, i1, blocks in self._blocks(x_all[..., :dn], c_y, out.points, plan):
            for t in blocks:
                if i0 == 0:  # the patterns do not depend on the output features
                    pattern_gram += torch.einsum("bhts,bgts->hg", t.a, t.a)
                    diag_a += t.a.diagonal(t.offset, dim1=2, dim2=3).sum((0, 2))
                self._exact_block(t, cross[:, i0:i1], low, diag_z[..., i0:i1])
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

    def _exact_block(self, t: _Block, cross: Tensor, low: Tensor, diag_z: Tensor) -> None:
        """One block's share of ``Σ Ā Zᵀ`` (``cross``, this block's output features),
        ``Σ Z Zᵀ`` (``low``) and ``Σ_t Z_tt`` (``diag_z``)."""
        heads, dh = self.n_heads, self.d_head
        k_out = t.g.shape[-1]
        a_diag = t.a.diagonal(t.offset, dim1=2, dim2=3)  # (b, h, t)
        g_diag = t.g.diagonal(t.offset, dim1=2, dim2=3)  # (b, h, k, t)
        beta_diag = t.beta.diagonal(t.offset, dim1=1, dim2=2)  # (b, h, e, t)
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
        diag_z[0] += torch.einsum("bhet,bhkt->hek", beta_diag, g_diag)
        diag_z[1] += t.gamma_sum.sum((0, 2))

    @staticmethod
    def _key_terms_unrotated(t: _Block, cross: Tensor, low: Tensor) -> None:
        """The key-side parts of ``Σ Ā^h Zᵀ`` and ``Σ Z Zᵀ`` without rotary: ``β_ts = q_t`` for
        every ``s``, so the sums over ``s`` come first and cost ``O(H² Π k)`` per sample
        instead of ``O(H² Π k d_head)``."""
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
        is ``ρ_ris = Σ_t φ_rit R_ts[:, i] = Σ_h Ã^h_ris N_h[:, i] + U ζ_ris`` (and
        ``φ_ris E[:, i]`` on ``x``) with ``Ã_ris = Σ_t φ_rit Ā_ts`` and ``ζ_ris = [κ_ris;
        φ_ris Γ_s[:, i]]``, ``κ^h_ris = rot_sᵀ Σ_t φ_rit ḡ^h_tsi q^h_t``.

        The key half ``κ`` is summed over queries first, one matmul per chunk (the rotation
        depends on ``s`` only, so it comes after the sum), and kept in head space (width
        ``d``) for one chunk of output features at a time. The query half is never formed:
        ``φ² = 1`` makes its Gram ``n·Σ_s Γ_s Γ_sᵀ``, and its products with ``κ`` and ``Ã``
        go through ``Σ_r φ_ris κ_ris`` and ``Σ_r φ_ris Ã_ris``."""
        x_all = acts.to(F64)
        batch, n_pos, width = x_all.shape
        dn, heads, dh = self.dn, self.n_heads, self.d_head
        c_y, e = self._c_y_and_e(out.c_out, width - dn, x_all)
        assert draws.draws is not None  # drawn for every stochastic kind
        k_out, n_src = c_y.shape[1], draws.draws.shape[0]
        hd = heads * dh
        pattern_gram = x_all.new_zeros(heads, heads, k_out)
        cross = x_all.new_zeros(heads, k_out, 2, hd)  # (h, i, K/Q, (g, e))
        low = x_all.new_zeros(2, hd, 2, hd)
        col_a = x_all.new_zeros(heads, k_out)
        col_z = x_all.new_zeros(2, hd, k_out)
        # κ, Ã, Γ, Σ_r φ κ (and one term of it) and Σ_r φ Ã live through a chunk of output
        # features: per (sample, position, feature) n·(d + H) + 3d + 2H floats. They are laid
        # out feature first, so every product below reads them in place (no copies).
        kept = 8 * (n_src * (hd + heads) + 3 * hd + 2 * heads)
        plan = self._plan(batch, n_pos, k_out, kept=kept)
        for b0, b1, i0, i1, blocks in self._blocks(x_all[..., :dn], c_y, out.points, plan):
            b, n_i = b1 - b0, i1 - i0
            phi = as_signs(draws.draws[:, i0:i1, b0:b1]).to(x_all.device).permute(1, 2, 0, 3)
            kappa = x_all.new_zeros(n_i, b, n_src, n_pos, heads, dh)  # φ: (i, b, r, t)
            a_src = x_all.new_zeros(n_i, b, n_src, n_pos, heads)
            gamma = x_all.new_zeros(n_i, b, n_pos, heads, dh)
            for t in blocks:
                s1 = t.s0 + t.a.shape[-1]
                phi_t = phi[..., t.t0 : t.t1]  # (i, b, r, t)
                a_src[..., t.s0 : s1, :] += torch.einsum("ibrt,bhts->ibrsh", phi_t, t.a)
                q_heads = t.q.permute(0, 2, 1, 3)  # (b, h, t, e)
                for r in range(n_src):
                    # Σ_t φ_rit ḡ^h_tsi q^h_t: one matmul over t per (sample, head)
                    weighted = t.g * phi_t[:, :, r].permute(1, 2, 0)[:, None, :, None, :]
                    summed = weighted.permute(0, 1, 3, 4, 2) @ q_heads[:, :, None]
                    kappa[:, :, r, t.s0 : s1] += summed.permute(3, 0, 2, 1, 4)  # (i, b, s, h, e)
                gamma[:, :, t.t0 : t.t1] = t.gamma_sum.permute(4, 0, 2, 1, 3)
            if self.rotary is not None:  # κ = rot_sᵀ (Σ_t …): the rotation of position s
                cos, sin = (r[:n_pos].to(F64).to(x_all.device)[:, None] for r in self.rotary)
                for i in range(n_i):  # one feature at a time: the temporaries stay small
                    kappa[i] = rotate(kappa[i], cos, -sin)
            flat_k = kappa.view(n_i, -1, hd)  # (i, (b, r, s), z)
            flat_g = gamma.view(n_i, -1, hd)  # (i, (b, s), z)
            signed_k = torch.zeros_like(gamma).view(n_i, b, n_pos, hd)  # Σ_r φ κ
            for r in range(n_src):
                signed_k += phi[:, :, r, :, None] * kappa[:, :, r].view(n_i, b, n_pos, hd)
            signed_a = torch.einsum("ibrs,ibrsh->ibsh", phi, a_src)  # Σ_r φ Ã
            rows_k = flat_k.reshape(-1, hd)
            low[0, :, 0] += rows_k.T @ rows_k
            kq = signed_k.view(-1, hd).T @ flat_g.reshape(-1, hd)
            low[0, :, 1] += kq
            low[1, :, 0] += kq.T
            rows_g = flat_g.reshape(-1, hd)
            low[1, :, 1] += n_src * (rows_g.T @ rows_g)
            a_flat = a_src.view(n_i, -1, heads)  # (i, (b, r, s), h)
            pattern_gram[..., i0:i1] += (a_flat.transpose(1, 2) @ a_flat).permute(1, 2, 0)
            cross[:, i0:i1, 0] += (a_flat.transpose(1, 2) @ flat_k).transpose(0, 1)
            signed_flat = signed_a.reshape(n_i, -1, heads)  # (i, (b, s), h)
            cross[:, i0:i1, 1] += (signed_flat.transpose(1, 2) @ flat_g).transpose(0, 1)
            col_a[:, i0:i1] += signed_flat.sum(1).T
            col_z[0, :, i0:i1] += signed_k.sum((1, 2)).T
            col_z[1, :, i0:i1] += n_src * flat_g.sum(1).T
        n_mats = self._m @ c_y  # (h, dn, k)
        u = torch.stack([self.w_k, self.w_q]).view(2, dn, heads, dh)
        u = u.permute(1, 0, 2, 3).reshape(dn, -1)  # (dn, (K/Q, g, e))
        dense = torch.einsum("hgi,hdi,gei->de", pattern_gram, n_mats, n_mats)
        mixed = torch.einsum("hdi,hiz,mz->dm", n_mats, cross.flatten(2), u)
        m = x_all.new_zeros(width, width)
        m[:dn, :dn] = dense + mixed + mixed.T + u @ low.view(2 * hd, 2 * hd) @ u.T
        columns = torch.einsum("hdi,hi->di", n_mats, col_a) + u @ col_z.view(2 * hd, k_out)
        m[:dn, dn:] = columns @ e.T
        m[dn:, :dn] = m[:dn, dn:].T
        m[dn:, dn:] = (batch * n_pos * n_src) * (e @ e.T)
        return m

    # --- edges ----------------------------------------------------------------------------

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos width"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in width"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
        draws: SourceDraws | None = None,
    ) -> Float[Tensor, "k_out k_in"]:
        """Per query chunk, ``A_t = Σ_s diag(f̂_s) C⁺_n R_ts + diag(f̂_t) C⁺_x E`` from the
        block's pieces; exact sources square and add it, position sources (one sign per
        source and query, shared by the output features, method §A.6) first add
        ``Σ_t φ_rt A_t`` over the query chunks and square that.

        The terms through the softmax partners are summed over keys in value space, where
        ``ḡ_ts = g̃_ts W_O C`` has ``d_value`` columns instead of ``k``: per query and input
        feature, ``Σ_s κ_ts g̃_ts`` and ``Σ_e C⁺_n W_Q Γ̃_t`` (``H d_value`` numbers), then one
        product with ``W_O C``. That costs ``H Π k_in d_value + P k_in H d_value k`` instead of
        ``H Π k_in k`` (GPT-2 small at 1024 tokens: about a fifth). Position sources sum
        the value-space pieces over queries first: the product with ``W_O C`` comes once per
        sample and source."""
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
        w_oc = self._w_o @ c_y  # (h, dv, k)
        dv = w_oc.shape[1]
        w_oc = w_oc.reshape(heads * dv, k_out)
        edges = x_all.new_zeros(k_in, k_out)
        signs = None if draws is None else draws.edge_signs()
        n_src = 0 if signs is None else signs.shape[0]
        # Per query: A_t and its copies (k_in·k), the value-space sums and their copies.
        row_extra = 8 * (3 * k_in * k_out + 3 * k_in * heads * dv)
        plan = self._plan(batch, n_pos, dv, k_in, row_extra=row_extra, whole=True)
        for b0, b1, _, _, blocks in self._blocks(x_all[..., :dn], None, points, plan):
            f = f_all[b0:b1]
            b = b1 - b0
            # Position sources: Σ_t φ_t of the weights, the values and f̂_t, then the output side.
            sums = [x_all.new_zeros(b, n_src, k_in, n) for n in (heads, heads * dv, 1)]
            for t in blocks:
                n_t, n_s = t.a.shape[2], t.a.shape[3]
                f_keys, f_queries = f[:, t.s0 : t.s0 + n_s], f[:, t.t0 : t.t1]
                weights = torch.einsum("bhts,bsj->bthj", t.a, f_keys)
                if self.rotary is None:  # β_ts = q_t: the key codes leave the sum over s
                    omega = torch.einsum("bthe,jhe->btjh", t.q, key_feats)
                    values = torch.einsum("bsj,bhtse->btjhe", f_keys, t.g)
                    values *= omega[..., None]
                else:
                    kappa = torch.einsum("btshe,jhe->btshj", t.beta, key_feats)
                    kappa *= f_keys[:, None, :, None]
                    values = torch.einsum("btshj,bhtse->btjhe", kappa, t.g)
                own = torch.einsum("jhe,bhtev->btjhv", query_feats, t.gamma_sum)
                values += f_queries[..., None, None] * own
                values = values.reshape(b, n_t, k_in, heads * dv)
                if signs is not None:
                    phi = as_signs(signs[:, 0, b0:b1, t.t0 : t.t1]).to(f.device)
                    sums[0] += torch.einsum("bthj,rbt->brjh", weights, phi)
                    sums[1] += torch.einsum("btjx,rbt->brjx", values, phi)
                    sums[2] += torch.einsum("btj,rbt->brj", f_queries, phi)[..., None]
                    continue
                a = torch.einsum("bthj,hjk->btjk", weights, feature_mats)
                a += values @ w_oc
                a += f_queries[..., None] * residual
                edges += a.square_().sum((0, 1))
            if signs is not None:
                signed = torch.einsum("brjh,hjk->brjk", sums[0], feature_mats)
                signed += sums[1] @ w_oc
                signed += sums[2] * residual
                edges += signed.square_().sum((0, 1))
        return edges.T
