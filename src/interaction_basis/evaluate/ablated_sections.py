"""One group of an edge ablation: a section fed some input features, read at some output features.

Edge ablation (method §E) evaluates, for every group of output features sharing a mask row,
``section(f[..., kept] C_in⁺[kept]) C_out[:, cols]``. For an arbitrary section that is one
section call per group over the whole evaluation set. The closed-form sections start and end
with matrix products, so the basis maps fold into their weights once per layer pair —
``(f C⁺) W = f (C⁺ W)`` and ``(h W_out) C_out = h (W_out C_out)`` — and a group costs
O(|kept|) per input product and O(|cols|) per output product instead of O(d) each: the sections
run only on the features kept and form only the outputs that the next layers read.

The folded matrices are formed in float64 and cast to the evaluation dtype. In float32 the
reassociated products round differently from the generic path (relative 1e-7); the C.1.3
reproduction and ``benchmarks/bench_ablation.py`` check that every score stays the same.

Attention also evaluates its projections on the distinct input rows of each position only
(:func:`unique_rows`): in mod-add a position's activations depend on one token (or none), so a
group's keys and values cost O(p) rows instead of O(batch); the products per sample that remain
are elementwise.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interaction_basis.lib.closed_form.attention import LastPositionAttention
from interaction_basis.lib.closed_form.mlp import ElementwiseMLP, Linear


class GroupOutput(NamedTuple):
    """``prepare(f)`` once per batch of input features ``f``; then, per group,
    ``evaluate(prepared, kept, cols) = section(f[..., kept] C⁺[kept]) C_out[:, cols]``."""

    prepare: Callable[[Tensor], Any]
    evaluate: Callable[[Any, Tensor, Tensor], Tensor]


def _same(f: Tensor) -> Tensor:
    return f


def _transposed(f: Float[Tensor, "... k"]) -> tuple[Float[Tensor, "k rows"], torch.Size]:
    return f.reshape(-1, f.shape[-1]).T.contiguous(), f.shape


def _fold(left: Tensor, right: Tensor, dtype: torch.dtype) -> Tensor:
    return (left.to(torch.float64) @ right.to(torch.float64)).to(dtype)


def make_group_output(
    section: Callable[[Tensor], Tensor],
    C_in_pinv: Float[Tensor, "in d_in"],
    C_out: Float[Tensor, "d_out out"],
    dtype: torch.dtype,
) -> GroupOutput:
    """The group evaluator of ``section``: folded for the closed-form sections, else generic.

    ``C_in_pinv`` and ``C_out`` are the (float64) basis maps; the evaluator computes in
    ``dtype``, the model's.
    """
    if isinstance(section, Linear):
        return _linear(section, C_in_pinv, C_out, dtype)
    if isinstance(section, ElementwiseMLP):
        return _mlp(section, C_in_pinv, C_out, dtype)
    if isinstance(section, LastPositionAttention):
        return _attention(section, C_in_pinv, C_out, dtype)
    pinv, c_out = C_in_pinv.to(dtype), C_out.to(dtype)

    def generic(f: Tensor, kept: Int[Tensor, " k"], cols: Int[Tensor, " c"]) -> Tensor:
        # Only the kept input features enter the map back (same as zeroing the others).
        return section(f[..., kept] @ pinv[kept]) @ c_out[:, cols]

    return GroupOutput(_same, generic)


def _linear(section: Linear, C_in_pinv: Tensor, C_out: Tensor, dtype: torch.dtype) -> GroupOutput:
    through = _fold(C_in_pinv, _fold(section.w, C_out, torch.float64), dtype)

    def group(f: Tensor, kept: Tensor, cols: Tensor) -> Tensor:
        return f[..., kept] @ through[kept][:, cols]

    return GroupOutput(_same, group)


def _mlp(
    section: ElementwiseMLP, C_in_pinv: Tensor, C_out: Tensor, dtype: torch.dtype
) -> GroupOutput:
    w_in = _fold(C_in_pinv, section.w_in, dtype)
    w_out = C_out.to(dtype) if section.w_out is None else _fold(section.w_out, C_out, dtype)
    residual = _fold(C_in_pinv, C_out, dtype) if section.residual else None

    def group(features: tuple[Tensor, torch.Size], kept: Tensor, cols: Tensor) -> Tensor:
        # Transposed, so that a group's few output columns are one wide product, not a
        # hidden-wide product with a thin right-hand side (much slower in BLAS).
        f_t, shape = features
        f_t = f_t[kept]
        out_t = w_out[:, cols].T @ section.activation(w_in[kept].T @ f_t)
        if residual is not None:
            out_t += residual[kept][:, cols].T @ f_t
        return out_t.T.reshape(*shape[:-1], len(cols))

    return GroupOutput(_transposed, group)


def unique_rows(f: Float[Tensor, "batch pos k"]) -> list[tuple[Tensor, Tensor]]:
    """Per position, the distinct rows of ``f`` and each sample's index into them."""
    return [torch.unique(f[:, s], dim=0, return_inverse=True) for s in range(f.shape[1])]


def _attention(
    section: LastPositionAttention, C_in_pinv: Tensor, C_out: Tensor, dtype: torch.dtype
) -> GroupOutput:
    w_q = _fold(C_in_pinv, section.w_q, dtype)
    # Keys and values of a position come from one product.
    w_kv = torch.cat([_fold(C_in_pinv, w, dtype) for w in (section.w_k, section.w_v)], dim=1)
    w_o = _fold(section.w_o, C_out, dtype)
    residual = _fold(C_in_pinv, C_out, dtype)
    h, dh, dv = section.n_heads, section.d_head, section.d_value

    def group(rows: list[tuple[Tensor, Tensor]], kept: Tensor, cols: Tensor) -> Tensor:
        # LastPositionAttention.__call__ on x = f C⁺[kept], read through C_out[:, cols]. The
        # products run on the distinct rows of each position; per sample only the scores
        # (gathered from a table when that is smaller than the batch) and each head's value
        # already read through W_o C_out[:, cols] are combined.
        last, last_of = rows[-1][0][:, kept], rows[-1][1]
        batch = last_of.shape[0]
        q = (last @ w_q[kept]).reshape(-1, h, dh).transpose(0, 1)  # (head, distinct, dh)
        w_kv_kept, w_o_cols = w_kv[kept], w_o[:, cols].reshape(h, dv, -1)
        scores, values = [], []
        for distinct, of in rows:
            kv = distinct[:, kept] @ w_kv_kept
            k = kv[:, : h * dh].reshape(-1, h, dh)
            v = kv[:, h * dh :].reshape(-1, h, dv).transpose(0, 1)
            values.append((v @ w_o_cols).transpose(0, 1)[of])  # (batch, head, cols)
            if q.shape[1] * k.shape[0] <= batch:
                scores.append((q @ k.permute(1, 2, 0))[:, last_of, of].T)
            else:
                scores.append((q.transpose(0, 1)[last_of] * k[of]).sum(-1))
        pattern = (torch.stack(scores, 1) * section.scale).softmax(dim=1)  # (batch, pos, head)
        out = (pattern.unsqueeze(-1) * torch.stack(values, 1)).sum((1, 2))
        return ((last @ residual[kept][:, cols])[last_of] + out).unsqueeze(1)

    return GroupOutput(unique_rows, group)
