"""One group of an edge ablation: a section fed some input features, read at some output features.

Edge ablation (lib_spec E) evaluates, for every group of output features sharing a mask row,
``section(f[..., kept] C_in⁺[kept]) C_out[:, cols]``. For an arbitrary section that is one
section call per group over the whole evaluation set. The closed-form sections start and end
with matrix products, so the basis maps fold into their weights once per layer pair —
``(f C⁺) W = f (C⁺ W)`` and ``(h W_out) C_out = h (W_out C_out)`` — and a group costs
O(|kept|) per input product and O(|cols|) per output product instead of O(d) each: the sections
run only on the features kept and form only the outputs that the next layers read.

The folded matrices are formed in float64 and cast to the evaluation dtype. In float32 the
reassociated products round differently from the generic path (relative 1e-7); the C.1.3
reproduction and ``benchmarks/bench_ablation.py`` check that every score stays the same.
"""

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interaction_basis.models.closed_form import ElementwiseMLP, LastPositionAttention, Linear

#: ``(f[..., kept], kept, cols) -> section(f[..., kept] C⁺[kept]) C_out[:, cols]``
GroupOutput = Callable[[Tensor, Tensor, Tensor], Tensor]


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
        return section(f @ pinv[kept]) @ c_out[:, cols]

    return generic


def _linear(section: Linear, C_in_pinv: Tensor, C_out: Tensor, dtype: torch.dtype) -> GroupOutput:
    through = _fold(C_in_pinv, _fold(section.w, C_out, torch.float64), dtype)

    def group(f: Tensor, kept: Tensor, cols: Tensor) -> Tensor:
        return f @ through[kept][:, cols]

    return group


def _mlp(
    section: ElementwiseMLP, C_in_pinv: Tensor, C_out: Tensor, dtype: torch.dtype
) -> GroupOutput:
    w_in = _fold(C_in_pinv, section.w_in, dtype)
    w_out = C_out.to(dtype) if section.w_out is None else _fold(section.w_out, C_out, dtype)
    residual = _fold(C_in_pinv, C_out, dtype) if section.residual else None

    def group(f: Tensor, kept: Tensor, cols: Tensor) -> Tensor:
        out = section.activation(f @ w_in[kept]) @ w_out[:, cols]
        return out if residual is None else f @ residual[kept][:, cols] + out

    return group


def _attention(
    section: LastPositionAttention, C_in_pinv: Tensor, C_out: Tensor, dtype: torch.dtype
) -> GroupOutput:
    w_q, w_k, w_v = (_fold(C_in_pinv, w, dtype) for w in (section.w_q, section.w_k, section.w_v))
    w_o = _fold(section.w_o, C_out, dtype)
    residual = _fold(C_in_pinv, C_out, dtype)
    h, dh, dv = section.n_heads, section.d_head, section.d_value

    def group(f: Tensor, kept: Tensor, cols: Tensor) -> Tensor:
        # LastPositionAttention.__call__ on x = f C⁺[kept], read through C_out[:, cols].
        batch, n_pos = f.shape[0], f.shape[1]
        last = f[:, -1]
        q = (last @ w_q[kept]).reshape(batch, 1, h, dh)
        k = (f @ w_k[kept]).reshape(batch, n_pos, h, dh)
        v = (f @ w_v[kept]).reshape(batch, n_pos, h, dv)
        pattern = ((q * k).sum(-1) * section.scale).softmax(dim=1)
        z = (pattern.unsqueeze(-1) * v).sum(1).reshape(batch, h * dv)
        return (last @ residual[kept][:, cols] + z @ w_o[:, cols]).unsqueeze(1)

    return group
