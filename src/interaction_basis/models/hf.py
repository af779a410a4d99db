"""Hugging Face causal LMs (GPT-2, GPT-Neo, GPT-NeoX/Pythia) as bias-folded sectioned models.

:func:`build_hf_sections` re-implements the forward pass of a loaded ``transformers`` model from
its weights, in the form LIB differentiates (method §A.1): every activation is
``(batch, pos, d)`` with the folded constant 1 as its last coordinate, and the model is a chain
of steps (:class:`~interaction_basis.models.sectioned.Step`) named after the node layer at
their input.

Weight processing (how this differs from the reference, which used TransformerLens'
``from_pretrained`` defaults, method §A.1):

- ``fold_ln``: always. The LayerNorm affine weight ``γ`` and bias ``β`` are folded into the
  linear map that reads the LayerNorm output: ``W' = diag(γ) W`` and ``b' = β W + b``. The node
  layers therefore see the plain normalised residual ``(x - mean) / sqrt(var + eps)``, exactly
  like TransformerLens' ``LNPre``. (TransformerLens also centres the *reading* weights over
  ``d_model``; that changes nothing on the normalised, mean-free input, so it is skipped.)
- ``center_writing_weights`` (default on, as in TransformerLens): every map that writes to the
  residual stream (``W_E``, ``W_pos``, ``W_O``/``b_O``, ``W_out``/``b_out``) has its mean over
  ``d_model`` removed. Every reader of the residual is a LayerNorm, so the logits do not change,
  but the residual activations (and hence Grams, PCA and LIB bases) are those of the reference.
- ``center_unembed`` (default on, as in TransformerLens): ``W_U`` and ``b_U`` have their mean
  over the vocabulary removed. This shifts each position's logits by a constant (softmax and
  loss are unchanged). Switch it off to reproduce the Hugging Face logits exactly.
- ``fold_value_biases`` (default on, as in TransformerLens): the value bias, LayerNorm bias
  included (``β W_V + b_V``), moves into ``b_O`` as ``b_O + b_V W_O`` (attention patterns sum
  to 1). No activation changes, but the attention section's derivative with respect to the
  constant input at each position does: kept in the values, each head's ``b_V W_O`` is
  weighted by that head's pattern; folded, the sum over heads goes into ``b_O``, whose folded
  row is spread equally over the heads' patterns (method §A.1). So the constant feature's Λ
  and edges change (by 2.9e-6 relative at ``ln1.0`` in the cross-check against the
  reference). Switch it off to keep ``b_V`` in the values.
- Rotary embeddings (GPT-NeoX) use the ``cos``/``sin`` tables of the model's own rotary module,
  which Hugging Face computes in float32 even for float64 models; TransformerLens computes the
  angles in float64. The difference is ~1e-7 relative; we reproduce Hugging Face.

Node layers per block ``L`` in forward order (``D = d_model + 1``; see :func:`hf_node_layers`):

- ``resid_pre.L``: residual (D). Identical activations to ``ln1.L`` (an alias for quick runs).
- ``ln1.L``: residual (D).
- ``ln1_out.L``: (var, residual), D + 1; ``var`` is the biased variance over the first
  ``d_model`` coordinates (the constant excluded) and is coordinate 0.
- ``attn_in.L``: (LN-normalised residual with the constant re-appended, residual), 2D.
- ``resid_mid.L``: residual after attention (D), alias of ``ln2.L`` (sequential blocks only).
- ``ln2.L``, ``ln2_out.L``, ``mlp_in.L``: as ``ln1.L``, ``ln1_out.L``, ``attn_in.L``.
- ``resid_post.L``: residual after the block (D), same activations as ``resid_pre.{L+1}``.

Parallel-residual blocks (GPT-NeoX with ``use_parallel_residual``, e.g. Pythia), where
``out = x + attn(LN1(x)) + mlp(LN2(x))``, follow the reference's ``add_resid1`` with
``return_residual`` and ``DualLayerNormIn``/``DualLayerNormOut``: every node layer is a cut of
the block, so the raw block input ``x`` that the MLP branch still needs is carried along:

- ``ln1.L``, ``ln1_out.L``, ``attn_in.L`` as above;
- ``ln2.L``: ``(x + attn_out, x)``, 2D;
- ``ln2_out.L``: ``(var(x), x, x + attn_out)``, 2D + 1, variance first;
- ``mlp_in.L``: ``(LN2-normalised x with the constant, x + attn_out)``, 2D;
- there is no ``resid_mid.L`` (no residual exists between the branches).

After the blocks: ``ln_final`` (residual), ``ln_final_out`` ((var, residual)), ``unembed`` (the
LN-normalised residual with the constant; ``ln_final_out`` does not pass the residual on) and
``output`` (logits, no constant). LayerNorm-out clamps the variance node with a ReLU (edge
ablations can make it negative).

Bias folding follows method §A.1: ``W_E`` gets a 0 column (1 for rotary models without a
positional embedding), ``W_pos`` a 1 column, Q/K/V the bias as an input row, V an output column
carrying the constant, ``W_O`` the row ``b_O / n_heads``, ``W_in`` the bias row and the column
``(0, ..., 0, r1)`` with ``act(r1) = 1``, ``W_out`` the bias row, ``W_U`` the bias row.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    GPT2LMHeadModel,
    GPTNeoForCausalLM,
    GPTNeoXForCausalLM,
    PreTrainedModel,
)

if TYPE_CHECKING:  # the block classes, for the loops over a ModuleList (typed nn.Module)
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoBlock
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

from interaction_basis.lib.closed_form.causal_attention import CausalAttention, rotate
from interaction_basis.lib.closed_form.layernorm import LayerNormIn, LayerNormOut
from interaction_basis.lib.closed_form.per_token import PerToken, ResidualMLP
from interaction_basis.models.sectioned import (
    SectionedModel,
    Step,
    build_sectioned_model,
    identity,
)

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTNeoXForCausalLM")
NodeLayerKind = Literal["ln", "resid", "all"]

#: Root finding interval for ``act(r1) = 1`` (method §A.1).
_R1_BRACKET = (-1.0, 4.0)


@dataclass(frozen=True)
class _LayerNorm:
    weight: Float[Tensor, " d_model"]
    bias: Float[Tensor, " d_model"]
    eps: float


@dataclass(frozen=True)
class _RawBlock:
    """One block's weights in ``x @ W + b`` convention; head-major Q/K/V/O columns."""

    ln1: _LayerNorm
    ln2: _LayerNorm
    w_q: Tensor  # (d_model, n_heads * d_head)
    w_k: Tensor
    w_v: Tensor
    b_q: Tensor  # (n_heads * d_head,)
    b_k: Tensor
    b_v: Tensor
    w_o: Tensor  # (n_heads * d_head, d_model)
    b_o: Tensor
    w_in: Tensor  # (d_model, d_mlp)
    b_in: Tensor
    w_out: Tensor  # (d_mlp, d_model)
    b_out: Tensor
    mask: Tensor  # (n_ctx, n_ctx) bool: query may attend key
    scale: float
    act: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class _RawModel:
    w_e: Tensor  # (vocab, d_model)
    w_pos: Tensor | None  # (n_ctx, d_model); None for rotary models
    blocks: list[_RawBlock]
    ln_final: _LayerNorm
    w_u: Tensor  # (d_model, vocab)
    b_u: Tensor
    n_heads: int
    d_head: int
    n_ctx: int
    parallel: bool
    rotary: tuple[Tensor, Tensor] | None  # cos, sin: (n_ctx, rotary_dim)


def load_hf_model(
    path_or_dir: str | os.PathLike, dtype: torch.dtype = torch.float64
) -> PreTrainedModel:
    """Load a causal LM from a local folder (never the network), in eval mode.

    Args:
        path_or_dir: a folder written by ``save_pretrained`` (``config.json`` + weights), e.g.
            ``resources/models/<model>``.
        dtype: parameter dtype (float64 for LIB builds).

    Raises:
        FileNotFoundError: if the folder does not exist.
        ValueError: if it is not a loadable model folder or the architecture is unsupported.
    """
    path = Path(path_or_dir)
    hint = (
        "Models load offline from local folders: run the download rule first "
        "(e.g. `snakemake --cores 1 all_models` on a node with internet), or point the model "
        "source at a folder written by `save_pretrained`."
    )
    if not path.is_dir():
        raise FileNotFoundError(f"Model folder {str(path)!r} does not exist. {hint}")
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{str(path)!r} is not a Hugging Face model folder: it has no config.json. {hint}"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"Could not load a causal LM from {str(path)!r}: {err}. The folder must hold "
            f"config.json and the weights (model.safetensors). {hint}"
        ) from err
    _check_supported(model)
    return model.eval()


def _check_supported(model: PreTrainedModel) -> None:
    if not isinstance(model, GPT2LMHeadModel | GPTNeoForCausalLM | GPTNeoXForCausalLM):
        raise ValueError(
            f"Unsupported model class {type(model).__name__}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )


def hf_node_layers(
    model: PreTrainedModel,
    kind: NodeLayerKind = "ln",
    final: Literal["unembed", "output"] = "unembed",
) -> list[str]:
    """Node layers of a supported model, in forward order.

    Args:
        model: a GPT-2, GPT-Neo or GPT-NeoX causal LM.
        kind: ``"ln"``: the reference's LayerNorm-split set (per block ``ln1, ln1_out, attn_in,
            ln2, ln2_out, mlp_in``, then ``ln_final, ln_final_out``; method §A.1); ``"resid"``:
            the residual stream only (``resid_pre.L``, ``resid_mid.L`` where it exists, and the
            last ``resid_post``); ``"all"``: every available name.
        final: last node layer, ``"unembed"`` (the LM configs, with ``rotate_final``) or
            ``"output"`` (logits).
    """
    _check_supported(model)
    n_layers, parallel = _n_layers(model), _is_parallel(model)
    names = _layer_names(n_layers, parallel)
    if kind == "all":
        return names[: names.index(final) + 1]
    if kind == "ln":
        prefixes = ("ln1.", "ln1_out.", "attn_in.", "ln2.", "ln2_out.", "mlp_in.")
        chosen = [n for n in names if n.startswith(prefixes)] + ["ln_final", "ln_final_out"]
    elif kind == "resid":
        chosen = [n for n in names if n.startswith(("resid_pre.", "resid_mid."))]
        chosen.append(f"resid_post.{n_layers - 1}")
    else:
        raise ValueError(f"Unknown node-layer kind {kind!r}; use ln, resid or all.")
    if final == "output":
        chosen.append("unembed")
    chosen.append(final)
    return chosen


def _n_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)


def _is_parallel(model: PreTrainedModel) -> bool:
    return isinstance(model, GPTNeoXForCausalLM) and bool(model.config.use_parallel_residual)


def _layer_names(n_layers: int, parallel: bool) -> list[str]:
    """Every node-layer name in forward order (the names of the steps, then ``output``)."""
    names = []
    for layer in range(n_layers):
        names += [f"resid_pre.{layer}", f"ln1.{layer}", f"ln1_out.{layer}", f"attn_in.{layer}"]
        if not parallel:
            names.append(f"resid_mid.{layer}")
        names += [f"ln2.{layer}", f"ln2_out.{layer}", f"mlp_in.{layer}", f"resid_post.{layer}"]
    return names + ["ln_final", "ln_final_out", "unembed", "output"]


def build_hf_sections(
    model: PreTrainedModel,
    node_layers: Sequence[str],
    dtype: torch.dtype = torch.float64,
    *,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> SectionedModel:
    """The bias-folded sectioned form of a GPT-2, GPT-Neo or GPT-NeoX causal LM.

    Args:
        model: the loaded model (any dtype; weights are copied and cast to ``dtype``).
        node_layers: node layers in forward order; see the module docstring and
            :func:`hf_node_layers`.
        dtype: dtype of the sectioned model (float64 for builds).
        center_writing_weights: remove the ``d_model`` mean of residual writes
            (TransformerLens default; the logits are unchanged).
        center_unembed: remove the vocabulary mean of ``W_U``/``b_U`` (TransformerLens default;
            shifts each position's logits by a constant).
        fold_value_biases: move the value bias into the output bias (TransformerLens
            default; changes the attention sections' Jacobians, not the activations).

    Returns:
        The sectioned model. ``embed`` takes integer tokens ``(batch, pos)``.

    Raises:
        ValueError: for an unsupported model, unknown or misordered node layers, or an MLP
            activation without a preimage of 1 (the MLP bias cannot be folded).
    """
    _check_supported(model)
    with torch.no_grad():
        raw = _extract(model, dtype)
        return _build(
            raw, node_layers, dtype, center_writing_weights, center_unembed, fold_value_biases
        )


# --- weight extraction -----------------------------------------------------------------------


def _t(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached copy in ``dtype`` on the model's device."""
    return x.detach().to(dtype=dtype).clone()


def _t_or_zeros(x: Tensor | None, dtype: torch.dtype, like: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=dtype, device=like.device) if x is None else _t(x, dtype)


def _layer_norm(module: torch.nn.LayerNorm, dtype: torch.dtype, like: Tensor) -> _LayerNorm:
    d = module.normalized_shape[0]
    if module.weight is None:
        weight = torch.ones(d, dtype=dtype, device=like.device)
    else:
        weight = _t(module.weight, dtype)
    return _LayerNorm(weight, _t_or_zeros(module.bias, dtype, like, d), float(module.eps))


def _linear_t(module: torch.nn.Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``nn.Linear`` as ``(W, b)`` with ``y = x @ W + b``."""
    w = _t(module.weight, dtype).T.contiguous()
    return w, _t_or_zeros(module.bias, dtype, w, w.shape[1])


def _causal(n_ctx: int, like: Tensor) -> Tensor:
    return torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=like.device).tril()


def _extract(model: PreTrainedModel, dtype: torch.dtype) -> _RawModel:
    if isinstance(model, GPT2LMHeadModel):
        return _extract_gpt2(model, dtype)
    if isinstance(model, GPTNeoForCausalLM):
        return _extract_gpt_neo(model, dtype)
    # ``_check_supported`` lets only the three supported classes through.
    return _extract_gpt_neox(cast(GPTNeoXForCausalLM, model), dtype)


def _extract_gpt2(model: GPT2LMHeadModel, dtype: torch.dtype) -> _RawModel:
    cfg = model.config
    if getattr(cfg, "add_cross_attention", False):
        raise ValueError("GPT-2 models with cross-attention are not supported.")
    tr = model.transformer
    d = cfg.hidden_size
    n_ctx = tr.wpe.weight.shape[0]
    blocks = []
    for blk in cast("Iterable[GPT2Block]", tr.h):
        w_qkv, b_qkv = _t(blk.attn.c_attn.weight, dtype), _t(blk.attn.c_attn.bias, dtype)
        blocks.append(
            _RawBlock(
                ln1=_layer_norm(blk.ln_1, dtype, w_qkv),
                ln2=_layer_norm(blk.ln_2, dtype, w_qkv),
                w_q=w_qkv[:, :d], w_k=w_qkv[:, d : 2 * d], w_v=w_qkv[:, 2 * d :],
                b_q=b_qkv[:d], b_k=b_qkv[d : 2 * d], b_v=b_qkv[2 * d :],
                w_o=_t(blk.attn.c_proj.weight, dtype), b_o=_t(blk.attn.c_proj.bias, dtype),
                w_in=_t(blk.mlp.c_fc.weight, dtype), b_in=_t(blk.mlp.c_fc.bias, dtype),
                w_out=_t(blk.mlp.c_proj.weight, dtype), b_out=_t(blk.mlp.c_proj.bias, dtype),
                mask=_causal(n_ctx, w_qkv),
                scale=float(blk.attn.scaling),
                act=blk.mlp.act,
            )
        )  # fmt: skip
    w_u, b_u = _linear_t(model.lm_head, dtype)
    n_heads = cfg.num_attention_heads
    return _RawModel(
        w_e=_t(tr.wte.weight, dtype), w_pos=_t(tr.wpe.weight, dtype), blocks=blocks,
        ln_final=_layer_norm(tr.ln_f, dtype, w_u), w_u=w_u, b_u=b_u, n_heads=n_heads,
        d_head=d // n_heads, n_ctx=n_ctx, parallel=False, rotary=None,
    )  # fmt: skip


def _extract_gpt_neo(model: GPTNeoForCausalLM, dtype: torch.dtype) -> _RawModel:
    cfg = model.config
    tr = model.transformer
    d = cfg.hidden_size
    n_ctx = tr.wpe.weight.shape[0]
    blocks = []
    for blk in cast("Iterable[GPTNeoBlock]", tr.h):
        attn = blk.attn.attention
        w_q, b_q = _linear_t(attn.q_proj, dtype)
        w_k, b_k = _linear_t(attn.k_proj, dtype)
        w_v, b_v = _linear_t(attn.v_proj, dtype)
        w_o, b_o = _linear_t(attn.out_proj, dtype)
        w_in, b_in = _linear_t(blk.mlp.c_fc, dtype)
        w_out, b_out = _linear_t(blk.mlp.c_proj, dtype)
        # The module's own mask buffer: causal, and for local layers only the last
        # ``window_size`` keys (the query included).
        mask = attn.bias[0, 0].detach().to(dtype=torch.bool).clone()
        blocks.append(
            _RawBlock(
                ln1=_layer_norm(blk.ln_1, dtype, w_q), ln2=_layer_norm(blk.ln_2, dtype, w_q),
                w_q=w_q, w_k=w_k, w_v=w_v, b_q=b_q, b_k=b_k, b_v=b_v, w_o=w_o, b_o=b_o,
                w_in=w_in, b_in=b_in, w_out=w_out, b_out=b_out, mask=mask,
                scale=1.0,  # GPT-Neo does not scale attention scores by 1/sqrt(d_head)
                act=blk.mlp.act,
            )
        )  # fmt: skip
    w_u, b_u = _linear_t(model.lm_head, dtype)
    n_heads = cfg.num_heads
    return _RawModel(
        w_e=_t(tr.wte.weight, dtype), w_pos=_t(tr.wpe.weight, dtype), blocks=blocks,
        ln_final=_layer_norm(tr.ln_f, dtype, w_u), w_u=w_u, b_u=b_u, n_heads=n_heads,
        d_head=d // n_heads, n_ctx=n_ctx, parallel=False, rotary=None,
    )  # fmt: skip


#: Rotary types whose tables do not depend on the sequence length.
_STATIC_ROPE_TYPES = ("default", "linear")


def _extract_gpt_neox(model: GPTNeoXForCausalLM, dtype: torch.dtype) -> _RawModel:
    cfg = model.config
    nx = model.gpt_neox
    d = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    d_head = d // n_heads
    n_ctx = int(cfg.max_position_embeddings)
    rope_type = nx.rotary_emb.rope_type
    if rope_type not in _STATIC_ROPE_TYPES:
        raise ValueError(
            f"Rotary type {rope_type!r} is not supported (its tables depend on the sequence "
            f"length); supported: {', '.join(_STATIC_ROPE_TYPES)}."
        )
    positions = torch.arange(n_ctx, device=nx.embed_in.weight.device)[None]
    probe = torch.zeros(1, dtype=dtype, device=nx.embed_in.weight.device)
    cos, sin = nx.rotary_emb(probe, position_ids=positions)
    rotary = (_t(cos[0], dtype), _t(sin[0], dtype))
    blocks = []
    for blk in cast("Iterable[GPTNeoXLayer]", nx.layers):
        attn = blk.attention
        w_qkv, b_qkv = _linear_t(attn.query_key_value, dtype)
        # Output features are ordered (head, q/k/v, d_head).
        w_qkv = w_qkv.reshape(d, n_heads, 3, d_head)
        b_qkv = b_qkv.reshape(n_heads, 3, d_head)
        w_o, b_o = _linear_t(attn.dense, dtype)
        w_in, b_in = _linear_t(blk.mlp.dense_h_to_4h, dtype)
        w_out, b_out = _linear_t(blk.mlp.dense_4h_to_h, dtype)
        blocks.append(
            _RawBlock(
                ln1=_layer_norm(blk.input_layernorm, dtype, w_o),
                ln2=_layer_norm(blk.post_attention_layernorm, dtype, w_o),
                w_q=w_qkv[:, :, 0].reshape(d, d), w_k=w_qkv[:, :, 1].reshape(d, d),
                w_v=w_qkv[:, :, 2].reshape(d, d), b_q=b_qkv[:, 0].reshape(d),
                b_k=b_qkv[:, 1].reshape(d), b_v=b_qkv[:, 2].reshape(d),
                w_o=w_o, b_o=b_o, w_in=w_in, b_in=b_in, w_out=w_out, b_out=b_out,
                mask=_causal(n_ctx, w_o), scale=float(attn.scaling), act=blk.mlp.act,
            )
        )  # fmt: skip
    w_u, b_u = _linear_t(model.lm_head, dtype)
    return _RawModel(
        w_e=_t(nx.embed_in.weight, dtype), w_pos=None, blocks=blocks,
        ln_final=_layer_norm(nx.final_layer_norm, dtype, w_u), w_u=w_u, b_u=b_u, n_heads=n_heads,
        d_head=d_head, n_ctx=n_ctx, parallel=bool(cfg.use_parallel_residual), rotary=rotary,
    )  # fmt: skip


# --- bias folding ----------------------------------------------------------------------------


def _fold_ln(ln: _LayerNorm, w: Tensor, b: Tensor) -> Tensor:
    """``LN(x) @ W + b`` as ``[normalised x, 1] @ W'``: rows ``diag(γ) W`` and ``β W + b``."""
    return torch.cat([ln.weight[:, None] * w, (ln.bias @ w + b)[None]], dim=0)


def _with_column(w: Tensor, last_row_value: float) -> Tensor:
    """Append an output column that is zero except ``last_row_value`` in the last row."""
    col = torch.zeros(*w.shape[:-1], 1, dtype=w.dtype, device=w.device)
    col[..., -1, 0] = last_row_value
    return torch.cat([w, col], dim=-1)


def _zero_column(w: Tensor) -> Tensor:
    return torch.cat([w, torch.zeros(*w.shape[:-1], 1, dtype=w.dtype, device=w.device)], dim=-1)


def _constant_column(w: Tensor, value: float) -> Tensor:
    """Append a column equal to ``value`` in every row (the embeddings' constant)."""
    return torch.cat([w, torch.full((w.shape[0], 1), value, dtype=w.dtype, device=w.device)], -1)


def _center_writes(w: Tensor) -> Tensor:
    """Remove the mean over the ``d_model`` output columns (all but the constant column)."""
    out = w.clone()
    out[..., :-1] -= out[..., :-1].mean(dim=-1, keepdim=True)
    return out


def _solve_r1(act: Callable[[Tensor], Tensor], dtype: torch.dtype) -> float:
    """``r1`` with ``act(r1) = 1``: bisection on [-1, 4] to float64 resolution (method §A.1).

    The spec's root finder stops at tol 1e-11; bisecting to the last bit is as cheap.
    """

    def f(x: float) -> float:
        return float(act(torch.tensor(x, dtype=torch.float64)))

    if f(1.0) == 1.0:
        return 1.0  # relu, identity
    lo, hi = _R1_BRACKET
    if not f(lo) < 1.0 < f(hi):
        raise ValueError(
            f"Cannot fold the MLP bias: activation {act!r} does not cross 1 on {_R1_BRACKET}."
        )
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if f(mid) < 1.0 else (lo, mid)
    r1 = hi if abs(f(hi) - 1.0) <= abs(f(lo) - 1.0) else lo
    if abs(float(act(torch.tensor(r1, dtype=dtype))) - 1.0) > 1e-6:
        raise ValueError(f"Cannot fold the MLP bias: no r1 with act(r1) = 1 for {act!r}.")
    return r1


@dataclass(frozen=True)
class _FoldedBlock:
    w_q: Tensor  # (D, H * dh)
    w_k: Tensor
    w_v: Tensor  # (D, H * (dh + 1))
    w_o: Tensor  # (H * (dh + 1), D)
    w_in: Tensor  # (D, d_mlp + 1)
    w_out: Tensor  # (d_mlp + 1, D)
    mask: Tensor
    scale: float
    act: Callable[[Tensor], Tensor]
    eps1: float
    eps2: float


def _fold_block(
    blk: _RawBlock,
    n_heads: int,
    d_head: int,
    dtype: torch.dtype,
    center: bool,
    fold_value_biases: bool,
) -> _FoldedBlock:
    d = blk.w_q.shape[0]
    big = d + 1
    w_v = _fold_ln(blk.ln1, blk.w_v, blk.b_v)
    b_o = blk.b_o
    if fold_value_biases:  # the value bias row (LN bias included) becomes part of b_O
        b_o = b_o + w_v[-1] @ blk.w_o
        w_v[-1] = 0.0
    w_v = w_v.reshape(big, n_heads, d_head)
    w_v = _with_column(w_v.permute(1, 0, 2), 1.0)  # (H, D, dh + 1): v carries a trailing 1
    w_v = w_v.permute(1, 0, 2).reshape(big, n_heads * (d_head + 1))
    # W_O: b_O / n_heads as each head's constant row; patterns sum to 1, so heads add to b_O.
    w_o = blk.w_o.reshape(n_heads, d_head, d)
    w_o = torch.cat([w_o, (b_o / n_heads).expand(n_heads, 1, d)], dim=1)
    w_o = _zero_column(w_o).reshape(n_heads * (d_head + 1), big)
    r1 = _solve_r1(blk.act, dtype)
    w_in = _with_column(_fold_ln(blk.ln2, blk.w_in, blk.b_in), r1)
    w_out = _zero_column(torch.cat([blk.w_out, blk.b_out[None]], dim=0))
    if center:
        w_o, w_out = _center_writes(w_o), _center_writes(w_out)
    return _FoldedBlock(
        w_q=_fold_ln(blk.ln1, blk.w_q, blk.b_q), w_k=_fold_ln(blk.ln1, blk.w_k, blk.b_k),
        w_v=w_v, w_o=w_o, w_in=w_in, w_out=w_out, mask=blk.mask, scale=blk.scale,
        act=blk.act, eps1=blk.ln1.eps, eps2=blk.ln2.eps,
    )  # fmt: skip


# --- the sectioned forward pass --------------------------------------------------------------


def _variance(x: Tensor, d: int) -> Tensor:
    """Biased variance over the first ``d`` coordinates (the constant excluded), shape (..., 1)."""
    r = x[..., :d]
    return (r - r.mean(dim=-1, keepdim=True)).square().mean(dim=-1, keepdim=True)


def _normalise(var: Tensor, x: Tensor, d: int, eps: float) -> Tensor:
    """``[(x - mean) / sqrt(relu(var) + eps), x_const]``: LayerNormOut without affine."""
    r = x[..., :d]
    n = (r - r.mean(dim=-1, keepdim=True)) / torch.sqrt(torch.relu(var) + eps)
    return torch.cat([n, x[..., d:]], dim=-1)


def _attention_fn(
    blk: _FoldedBlock, n_heads: int, d_head: int, rotary: tuple[Tensor, Tensor] | None
) -> Callable[[Tensor], Tensor]:
    neg_inf = torch.tensor(float("-inf"), dtype=blk.w_q.dtype, device=blk.w_q.device)

    def attention(nc: Tensor) -> Tensor:
        """Attention output (constant column 0) from the normalised residual ``nc``."""
        batch, n_pos = nc.shape[0], nc.shape[1]
        q = (nc @ blk.w_q).reshape(batch, n_pos, n_heads, d_head)
        k = (nc @ blk.w_k).reshape(batch, n_pos, n_heads, d_head)
        v = (nc @ blk.w_v).reshape(batch, n_pos, n_heads, d_head + 1)
        if rotary is not None:
            cos, sin = rotary[0][:n_pos], rotary[1][:n_pos]
            c, s = cos[None, :, None, :], sin[None, :, None, :]
            q, k = rotate(q, c, s), rotate(k, c, s)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * blk.scale
        scores = torch.where(blk.mask[:n_pos, :n_pos], scores, neg_inf)
        z = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(dim=-1), v)
        return z.reshape(batch, n_pos, n_heads * (d_head + 1)) @ blk.w_o

    return attention


def _block_steps(layer: int, blk: _FoldedBlock, raw: _RawModel, parallel: bool) -> list[Step]:
    d = blk.w_q.shape[0] - 1
    big = d + 1
    attention = _attention_fn(blk, raw.n_heads, raw.d_head, raw.rotary)

    def ln1_in(x: Tensor) -> Tensor:  # residual -> (var, residual)
        return torch.cat([_variance(x, d), x], dim=-1)

    def ln1_out(h: Tensor) -> Tensor:  # (var, residual) -> (normalised, residual)
        x = h[..., 1:]
        return torch.cat([_normalise(h[..., :1], x, d, blk.eps1), x], dim=-1)

    def ln2_in(x: Tensor) -> Tensor:
        return torch.cat([_variance(x, d), x], dim=-1)

    def ln2_out(h: Tensor) -> Tensor:
        x = h[..., 1:]
        return torch.cat([_normalise(h[..., :1], x, d, blk.eps2), x], dim=-1)

    def attention_section(keep_input: bool) -> CausalAttention:
        """(normalised, residual) -> residual (+ attention), and the residual if kept."""
        return CausalAttention(
            attention, blk.w_q, blk.w_k, blk.w_v, blk.w_o, blk.mask, blk.scale, raw.n_heads,
            rotary=raw.rotary, keep_input=keep_input,
        )  # fmt: skip

    def dual_ln2_in(h: Tensor) -> Tensor:  # (y, x) -> (var(x), x, y)
        y, x = h[..., :big], h[..., big:]
        return torch.cat([_variance(x, d), x, y], dim=-1)

    def dual_ln2_out(h: Tensor) -> Tensor:  # (var, x, y) -> (n2(x), y)
        x, y = h[..., 1 : 1 + big], h[..., 1 + big :]
        return torch.cat([_normalise(h[..., :1], x, d, blk.eps2), y], dim=-1)

    # Every step but attention maps each position on its own: PerToken contracts its
    # Jacobians per token (lib/closed_form/); chains of such steps stay PerToken (sectioned.py).
    # Attention has its own closed form; a chain through it takes the generic path.
    steps = [
        Step(f"resid_pre.{layer}", identity),
        Step(f"ln1.{layer}", LayerNormIn(ln1_in, d)),
        Step(
            f"ln1_out.{layer}",
            LayerNormOut(ln1_out, d, blk.eps1, passthrough=1),
            variance_first=True,
        ),
    ]
    if parallel:
        steps += [
            # The raw input x travels next to y = x + attn so that LN2 can read x.
            Step(f"attn_in.{layer}", attention_section(keep_input=True)),
            Step(f"ln2.{layer}", LayerNormIn(dual_ln2_in, d, x_start=big)),
            Step(
                f"ln2_out.{layer}",
                LayerNormOut(dual_ln2_out, d, blk.eps2, 1 + big),
                variance_first=True,
            ),
        ]
    else:
        steps += [
            Step(f"attn_in.{layer}", attention_section(keep_input=False)),
            Step(f"resid_mid.{layer}", identity),
            Step(f"ln2.{layer}", LayerNormIn(ln2_in, d)),
            Step(
                f"ln2_out.{layer}",
                LayerNormOut(ln2_out, d, blk.eps2, passthrough=1),
                variance_first=True,
            ),
        ]
    return steps + [
        Step(f"mlp_in.{layer}", ResidualMLP(blk.w_in, blk.w_out, blk.act)),
        Step(f"resid_post.{layer}", identity),
    ]


def _build(
    raw: _RawModel,
    node_layers: Sequence[str],
    dtype: torch.dtype,
    center_writing_weights: bool,
    center_unembed: bool,
    fold_value_biases: bool,
) -> SectionedModel:
    d = raw.w_e.shape[1]
    rotary_only = raw.w_pos is None
    # The residual's constant comes from W_pos (1 column), or from W_E without positions.
    w_e = _constant_column(raw.w_e, 1.0 if rotary_only else 0.0)
    w_pos = None if raw.w_pos is None else _constant_column(raw.w_pos, 1.0)
    if center_writing_weights:
        w_e = _center_writes(w_e)
        w_pos = None if w_pos is None else _center_writes(w_pos)
    w_u = _fold_ln(raw.ln_final, raw.w_u, raw.b_u)
    if center_unembed:
        w_u = w_u - w_u.mean(dim=-1, keepdim=True)
    eps_f = raw.ln_final.eps
    n_ctx = raw.n_ctx

    def embed(tokens: Tensor) -> Tensor:
        if tokens.ndim != 2:
            raise ValueError(f"Tokens must be (batch, pos), got shape {tuple(tokens.shape)}.")
        if tokens.shape[1] > n_ctx:
            raise ValueError(f"Sequence length {tokens.shape[1]} exceeds the context {n_ctx}.")
        tokens = tokens.to(device=w_e.device, dtype=torch.long)
        x = w_e[tokens]
        return x if w_pos is None else x + w_pos[: tokens.shape[1]]

    steps: list[Step] = []
    for layer, blk in enumerate(raw.blocks):
        folded = _fold_block(
            blk, raw.n_heads, raw.d_head, dtype, center_writing_weights, fold_value_biases
        )
        steps += _block_steps(layer, folded, raw, raw.parallel)

    def ln_final_in(x: Tensor) -> Tensor:
        return torch.cat([_variance(x, d), x], dim=-1)

    def ln_final_out(h: Tensor) -> Tensor:  # (var, residual) -> normalised (no residual)
        return _normalise(h[..., :1], h[..., 1:], d, eps_f)

    def unembed(nc: Tensor) -> Tensor:
        return nc @ w_u

    steps += [
        Step("ln_final", LayerNormIn(ln_final_in, d)),
        Step("ln_final_out", LayerNormOut(ln_final_out, d, eps_f, passthrough=None)),
        Step("unembed", PerToken(unembed)),
    ]
    expected = _layer_names(len(raw.blocks), raw.parallel)
    if [s.name for s in steps] + ["output"] != expected:
        raise RuntimeError("internal: step names out of sync with _layer_names")
    return build_sectioned_model(embed, steps, "output", node_layers, device=w_e.device)
