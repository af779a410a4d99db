"""Closed forms of linear maps and MLPs with an elementwise activation (the MLP layers and
the mod-add MLP block and unembedding): :class:`Linear` and :class:`ElementwiseMLP`."""

from collections.abc import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.closed_form.common import F64, Points, identity_if_none


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
        r = self.w.to(F64) @ identity_if_none(c_out, self.w.shape[1], acts)
        return (acts.shape[0] * acts.shape[1]) * (r @ r.T)

    def compute_edges_sum(
        self,
        recon: Float[Tensor, "batch pos d_in"],
        feats: Float[Tensor, "batch pos k_in"],
        c_in_pinv: Float[Tensor, "k_in d_in"],
        c_out: Float[Tensor, "d_out k_out"] | None,
        points: Points,
    ) -> Float[Tensor, "k_out k_in"]:
        c_out = identity_if_none(c_out, self.w.shape[1], recon)
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

    def out_side(self, c_out: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """``C_out`` (identity if ``None``) and ``P = W_out C_out``, in float64."""
        c_out = identity_if_none(c_out, self.d_out, like)
        return c_out, c_out if self.w_out is None else self.w_out.to(F64) @ c_out

    def slopes(self, x: Float[Tensor, "rows d_in"], points: Points) -> Float[Tensor, "rows h"]:
        """The integrated slopes ``d̄ = Σ_α w_α φ'(α x W_in)`` of float64 rows ``x``."""
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
        c_out, p = self.out_side(c_out, x)
        slopes = self.slopes(x, points)
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
        c_out, p = self.out_side(c_out, x)
        slopes = self.slopes(x, points)
        w_in_feats = pinv @ self.w_in.to(F64)  # (k_in, hidden)
        if self.residual:
            base = pinv @ c_out
        else:
            base = x.new_zeros(pinv.shape[0], c_out.shape[1])
        edges = torch.zeros_like(base)
        for rows, a in feature_blocks(slopes, w_in_feats, p, base):
            a *= f[rows, :, None]
            edges += a.square_().sum(0)
        return edges.T


#: Rows per block of the MLP's per-sample products: (rows, hidden, k_out) stays in the L2 cache.
_MLP_ROWS = 16


def block_bytes(hidden: int, k_in: int, k_out: int) -> int:
    """Bytes per row of a block of :func:`feature_blocks` (the largest of its products)."""
    return 8 * (hidden * (k_in + k_out) + 2 * k_in * k_out)


def feature_blocks(
    slopes: Float[Tensor, "rows hidden"],
    w_feats: Float[Tensor, "k_in hidden"],
    p: Float[Tensor, "hidden k_out"],
    base: Float[Tensor, "k_in k_out"],
    block_rows: int = _MLP_ROWS,
) -> Iterator[tuple[Tensor | slice, Float[Tensor, "block k_in k_out"]]]:
    """``base + w_feats diag(slopes_x) p`` per row ``x``, in blocks of at most ``block_rows``
    rows: :func:`_binary_blocks` for 0/1 slopes (ReLU, at any α > 0), else
    :func:`_dense_blocks`."""
    binary = bool(((slopes == 0) | (slopes == 1)).all())
    blocks = _binary_blocks if binary else _dense_blocks
    yield from blocks(slopes, w_feats, p, base, block_rows)


def _dense_blocks(
    slopes: Float[Tensor, "rows hidden"],
    w_feats: Float[Tensor, "k_in hidden"],
    p: Float[Tensor, "hidden k_out"],
    base: Float[Tensor, "k_in k_out"],
    block_rows: int = _MLP_ROWS,
) -> Iterator[tuple[slice, Float[Tensor, "block k_in k_out"]]]:
    """``base + w_feats diag(slopes_x) p`` for blocks of rows ``x``."""
    for start in range(0, slopes.shape[0], block_rows):
        rows = slice(start, start + block_rows)
        scaled = slopes[rows, :, None] * p  # (block, hidden, k_out)
        yield rows, torch.baddbmm(base, w_feats.expand(len(scaled), -1, -1), scaled)


def _binary_blocks(
    slopes: Float[Tensor, "rows hidden"],
    w_feats: Float[Tensor, "k_in hidden"],
    p: Float[Tensor, "hidden k_out"],
    base: Float[Tensor, "k_in k_out"],
    block_rows: int = _MLP_ROWS,
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
        for start in range(0, len(selected), block_rows):
            stop = min(start + block_rows, len(selected))
            width = int(counts[stop - 1])
            index = neurons[start:stop, :width].reshape(-1)
            # Explicit last sizes: a block of rows with no neuron to sum (width 0) stays valid.
            p_rows = p_pad.index_select(0, index).view(stop - start, width, p_pad.shape[1])
            w_rows = w_pad.index_select(0, index).view(stop - start, width, w_pad.shape[1])
            a = torch.baddbmm(
                start_value, w_rows.transpose(1, 2), p_rows, alpha=-1.0 if complement else 1.0
            )
            yield selected[start:stop], a
