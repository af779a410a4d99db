"""The paper's 1-layer modular-addition transformer (method §B.1).

Two forms of the same weights: :class:`ModAddTransformer`, a plain ``nn.Module`` in
TransformerLens state-dict naming for training, and :func:`build_modadd_sections`, the
bias-folded sectioned model (method §A.1) that LIB differentiates.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from interaction_basis.lib.closed_form.attention import LastPositionAttention
from interaction_basis.lib.closed_form.mlp import ElementwiseMLP, Linear
from interaction_basis.models.sectioned import SectionedModel, Step, build_sectioned_model

MODADD_NODE_LAYERS = ("ln1.0", "ln2.0", "unembed", "output")


def modadd_shapes(
    d_vocab: int = 114,
    n_ctx: int = 3,
    d_model: int = 128,
    n_heads: int = 4,
    d_head: int = 32,
    d_mlp: int = 512,
) -> dict[str, tuple[int, ...]]:
    """Expected tensor shapes in TransformerLens naming."""
    return {
        "embed.W_E": (d_vocab, d_model),
        "pos_embed.W_pos": (n_ctx, d_model),
        "blocks.0.attn.W_Q": (n_heads, d_model, d_head),
        "blocks.0.attn.W_K": (n_heads, d_model, d_head),
        "blocks.0.attn.W_V": (n_heads, d_model, d_head),
        "blocks.0.attn.W_O": (n_heads, d_head, d_model),
        "blocks.0.attn.b_Q": (n_heads, d_head),
        "blocks.0.attn.b_K": (n_heads, d_head),
        "blocks.0.attn.b_V": (n_heads, d_head),
        "blocks.0.attn.b_O": (d_model,),
        "blocks.0.mlp.W_in": (d_model, d_mlp),
        "blocks.0.mlp.b_in": (d_mlp,),
        "blocks.0.mlp.W_out": (d_mlp, d_model),
        "blocks.0.mlp.b_out": (d_model,),
        "unembed.W_U": (d_model, d_vocab),
        "unembed.b_U": (d_vocab,),
    }


def validate_modadd_weights(weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Check names, shapes and finiteness; raise one error listing every problem."""
    w_e = weights.get("embed.W_E")
    w_q = weights.get("blocks.0.attn.W_Q")
    w_in = weights.get("blocks.0.mlp.W_in")
    w_pos = weights.get("pos_embed.W_pos")
    if w_e is None or w_q is None or w_in is None or w_pos is None:
        dims = {}
    else:
        dims = dict(
            d_vocab=w_e.shape[0],
            d_model=w_e.shape[-1],
            n_heads=w_q.shape[0],
            d_head=w_q.shape[-1],
            d_mlp=w_in.shape[-1],
            n_ctx=w_pos.shape[0],
        )
    expected = modadd_shapes(**dims)
    problems = []
    for name, shape in expected.items():
        if name not in weights:
            problems.append(f"missing tensor {name!r} (expected shape {shape})")
        elif tuple(weights[name].shape) != shape:
            problems.append(f"{name!r} has shape {tuple(weights[name].shape)}, expected {shape}")
        elif not np.isfinite(weights[name]).all():
            problems.append(f"{name!r} contains NaN/inf")
    if problems:
        raise ValueError(
            f"Invalid mod-add weights in {source}: "
            + "; ".join(problems)
            + ". Expected a TransformerLens state dict of a 1-layer attention+MLP model "
            "without LayerNorm (see shared/reference/README.md)."
        )


class ModAddTransformer(nn.Module):
    """Trainable mod-add transformer; parameter names follow TransformerLens."""

    def __init__(
        self,
        d_vocab: int = 114,
        n_ctx: int = 3,
        d_model: int = 128,
        n_heads: int = 4,
        d_head: int = 32,
        d_mlp: int = 512,
        seed: int = 0,
    ):
        super().__init__()
        self.d_head = d_head
        gen = torch.Generator().manual_seed(seed)
        shapes = modadd_shapes(d_vocab, n_ctx, d_model, n_heads, d_head, d_mlp)
        self.params = nn.ParameterDict()
        for name, shape in shapes.items():
            if name.split(".")[-1].startswith("b_"):
                init = torch.zeros(shape)
            else:
                fan_in = shape[-2] if len(shape) > 1 else shape[0]
                init = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            self.params[name.replace(".", "__")] = nn.Parameter(init)

    def p(self, name: str) -> Tensor:
        return self.params[name.replace(".", "__")]

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {k.replace("__", "."): v.detach().cpu().numpy() for k, v in self.params.items()}

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        p = self.p
        x = p("embed.W_E")[tokens] + p("pos_embed.W_pos")[: tokens.shape[1]]
        q = (
            torch.einsum("bpm,hmd->bhpd", x, p("blocks.0.attn.W_Q"))
            + p("blocks.0.attn.b_Q")[:, None]
        )
        k = (
            torch.einsum("bpm,hmd->bhpd", x, p("blocks.0.attn.W_K"))
            + p("blocks.0.attn.b_K")[:, None]
        )
        v = (
            torch.einsum("bpm,hmd->bhpd", x, p("blocks.0.attn.W_V"))
            + p("blocks.0.attn.b_V")[:, None]
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        n = tokens.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        z = scores.softmax(-1) @ v
        x = x + torch.einsum("bhpd,hdm->bpm", z, p("blocks.0.attn.W_O")) + p("blocks.0.attn.b_O")
        hidden = torch.relu(x @ p("blocks.0.mlp.W_in") + p("blocks.0.mlp.b_in"))
        x = x + hidden @ p("blocks.0.mlp.W_out") + p("blocks.0.mlp.b_out")
        return x @ p("unembed.W_U") + p("unembed.b_U")


def _append_row(w: Tensor, row: Tensor) -> Tensor:
    return torch.cat([w, row.unsqueeze(-2)], dim=-2)


def _one_hot_last_column(w: Tensor, value: float) -> Tensor:
    """Append an output column that is zero except ``value`` in the (bias) last row."""
    col = torch.zeros(*w.shape[:-1], 1, dtype=w.dtype)
    col[..., -1, 0] = value
    return torch.cat([w, col], dim=-1)


def _zero_column(w: Tensor) -> Tensor:
    return torch.cat([w, torch.zeros(*w.shape[:-1], 1, dtype=w.dtype)], dim=-1)


def build_modadd_sections(
    weights: Mapping[str, np.ndarray],
    node_layers: Sequence[str] = MODADD_NODE_LAYERS,
    dtype: torch.dtype = torch.float64,
) -> SectionedModel:
    """The bias-folded sectioned mod-add transformer (method §A.1).

    Node layers: ``ln1.0`` (embedding, all positions), ``ln2.0`` (after attention, last
    position only), ``unembed`` (after the MLP), ``output`` (logits).
    """
    validate_modadd_weights(weights)
    t = {k: torch.as_tensor(np.asarray(v), dtype=dtype) for k, v in weights.items()}
    n_heads, d_model, d_head = t["blocks.0.attn.W_Q"].shape
    w_e = _zero_column(t["embed.W_E"])
    w_pos = torch.cat(
        [t["pos_embed.W_pos"], torch.ones(t["pos_embed.W_pos"].shape[0], 1, dtype=dtype)], -1
    )
    # Q, K: bias as an extra input row. V: plus an output column carrying the constant.
    w_q = _append_row(t["blocks.0.attn.W_Q"], t["blocks.0.attn.b_Q"])
    w_k = _append_row(t["blocks.0.attn.W_K"], t["blocks.0.attn.b_K"])
    w_v = _one_hot_last_column(_append_row(t["blocks.0.attn.W_V"], t["blocks.0.attn.b_V"]), 1.0)
    # O: b_O / n_heads as the constant row; patterns sum to 1 so the heads add up to b_O.
    w_o = _zero_column(
        _append_row(
            t["blocks.0.attn.W_O"], t["blocks.0.attn.b_O"].expand(n_heads, d_model) / n_heads
        )
    )
    w_in = _one_hot_last_column(_append_row(t["blocks.0.mlp.W_in"], t["blocks.0.mlp.b_in"]), 1.0)
    w_out = _zero_column(_append_row(t["blocks.0.mlp.W_out"], t["blocks.0.mlp.b_out"]))
    w_u = _append_row(t["unembed.W_U"], t["unembed.b_U"])

    def embed(tokens: Tensor) -> Tensor:
        return w_e[tokens] + w_pos[: tokens.shape[1]]

    # Heads are fused into single matrices so that the forward passes are large GEMMs.
    attention = LastPositionAttention(
        w_q.permute(1, 0, 2).reshape(d_model + 1, n_heads * d_head),
        w_k.permute(1, 0, 2).reshape(d_model + 1, n_heads * d_head),
        w_v.permute(1, 0, 2).reshape(d_model + 1, n_heads * (d_head + 1)),
        w_o.reshape(n_heads * (d_head + 1), d_model + 1),
        n_heads,
    )
    mlp = ElementwiseMLP(w_in, w_out, torch.relu, residual=True)

    unembed = Linear(w_u)

    steps = [Step("ln1.0", attention), Step("ln2.0", mlp), Step("unembed", unembed)]
    return build_sectioned_model(embed, steps, "output", node_layers)
