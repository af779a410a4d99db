"""Fully connected image classifiers (method §B.2): trainable and bias-folded sectioned forms.

:class:`MLP` is a plain ``nn.Module`` for training. Its parameters follow the reference's
naming and orientation: ``layers.{i}.W`` of shape (in, out), used as ``x @ W + b``, and
``layers.{i}.b`` of shape (out,). :func:`build_mlp_sections` turns those arrays into the
bias-folded :class:`SectionedModel` that LIB differentiates (method §A.1, "For MLPs").

Node layer ``layers.{i}`` is the input of the ``i``-th linear layer: ``layers.0`` is the flattened
input, ``layers.{i>0}`` the post-activation of hidden layer ``i``, and ``output`` the logits.
"""

import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import get_args

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from interaction_basis.config import Activation
from interaction_basis.lib.closed_form.mlp import ElementwiseMLP, Linear
from interaction_basis.models.sectioned import SectionedModel, Step, build_sectioned_model

ACTIVATIONS: tuple[str, ...] = get_args(Activation)

ACT_FNS = {"relu": torch.relu, "gelu": nn.functional.gelu, "tanh": torch.tanh}


def mlp_node_layers(n_linear: int) -> tuple[str, ...]:
    """Every node layer of an MLP with ``n_linear`` linear layers: ``layers.0`` … ``output``."""
    return tuple(f"layers.{i}" for i in range(n_linear)) + ("output",)


def mlp_shapes(
    input_size: int, hidden_sizes: Sequence[int], output_size: int, bias: bool = True
) -> dict[str, tuple[int, ...]]:
    """Expected parameter shapes, in forward order."""
    sizes = [input_size, *hidden_sizes, output_size]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        shapes[f"layers.{i}.W"] = (n_in, n_out)
        if bias:
            shapes[f"layers.{i}.b"] = (n_out,)
    return shapes


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}.")


class MLP(nn.Module):
    """A trainable MLP ``input → hidden… → output`` with one activation after every hidden layer.

    Args:
        input_size: number of input features (images are flattened in ``forward``).
        hidden_sizes: widths of the hidden layers (may be empty: a linear classifier).
        output_size: number of classes.
        activation: ``relu``, ``gelu`` (exact, erf-based) or ``tanh``.
        bias: whether the linear layers have biases.
        seed: seeds the initialisation, ``nn.Linear``'s default ``U(±1/√fan_in)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_size: int = 10,
        activation: Activation = "relu",
        bias: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        _check_activation(activation)
        sizes = [input_size, *hidden_sizes, output_size]
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"Layer sizes must be positive, got {sizes}.")
        self.activation = activation
        self.bias = bias
        self.sizes = tuple(int(s) for s in sizes)
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.ParameterDict()
        for name, shape in mlp_shapes(input_size, hidden_sizes, output_size, bias).items():
            bound = 1.0 / math.sqrt(self.sizes[int(name.split(".")[1])])
            init = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            self.params[name.replace(".", "__")] = nn.Parameter(init)

    @property
    def n_linear(self) -> int:
        return len(self.sizes) - 1

    def p(self, name: str) -> Tensor:
        return self.params[name.replace(".", "__")]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Parameters as numpy arrays named ``layers.{i}.W`` / ``layers.{i}.b``."""
        return {k.replace("__", "."): v.detach().cpu().numpy() for k, v in self.params.items()}

    @classmethod
    def from_state_arrays(
        cls, state: Mapping[str, np.ndarray], activation: Activation = "relu"
    ) -> "MLP":
        """An MLP holding ``state`` (validated, see :func:`validate_mlp_weights`)."""
        input_size, hidden, output_size, bias = validate_mlp_weights(state)
        model = cls(input_size, hidden, output_size, activation=activation, bias=bias)
        with torch.no_grad():
            for name, value in state.items():
                param = model.p(name)
                param.copy_(torch.as_tensor(np.asarray(value), dtype=param.dtype))
        return model

    def forward(self, x: Float[Tensor, "batch ..."]) -> Float[Tensor, "batch out"]:
        x = x.flatten(1)
        act = ACT_FNS[self.activation]
        for i in range(self.n_linear):
            x = x @ self.p(f"layers.{i}.W")
            if self.bias:
                x = x + self.p(f"layers.{i}.b")
            if i < self.n_linear - 1:
                x = act(x)
        return x


def validate_mlp_weights(
    weights: Mapping[str, np.ndarray], source: str = "weights"
) -> tuple[int, tuple[int, ...], int, bool]:
    """Check names, shapes and finiteness of MLP weights; one error lists every problem.

    The architecture is read from the ``layers.{i}.W`` present; biases must be present for
    every layer or for none.

    Returns:
        ``(input_size, hidden_sizes, output_size, bias)``.

    Raises:
        ValueError: on missing, unexpected, mis-shaped or non-finite tensors.
    """
    problems: list[str] = []
    w_idx = sorted(
        int(k.split(".")[1])
        for k in weights
        if k.startswith("layers.") and k.endswith(".W") and k.split(".")[1].isdigit()
    )
    if not w_idx:
        raise ValueError(
            f"Invalid MLP weights in {source}: missing tensor 'layers.0.W' (expected shape "
            "(input_size, hidden_size)). Expected tensors 'layers.{i}.W' of shape (in, out) and "
            "'layers.{i}.b' of shape (out,), as written by MLP.state_arrays()."
        )
    n_linear = w_idx[-1] + 1
    have_bias = [f"layers.{i}.b" in weights for i in range(n_linear)]
    bias = any(have_bias)
    sizes: list[int | None] = [None] * (n_linear + 1)
    for i in range(n_linear):
        w = weights.get(f"layers.{i}.W")
        if w is not None and np.ndim(w) == 2:
            sizes[i] = sizes[i] if sizes[i] is not None else int(np.shape(w)[0])
            sizes[i + 1] = int(np.shape(w)[1])
    for i in range(n_linear):
        name = f"layers.{i}.W"
        expected = (sizes[i] if sizes[i] is not None else "?", sizes[i + 1] or "?")
        exp_str = "(" + ", ".join(str(s) for s in expected) + ")"
        if name not in weights:
            problems.append(f"missing tensor {name!r} (expected shape {exp_str})")
            continue
        shape = tuple(np.shape(weights[name]))
        if len(shape) != 2 or (i > 0 and sizes[i] is not None and shape[0] != sizes[i]):
            problems.append(f"{name!r} has shape {shape}, expected {exp_str}")
        if bias:
            b_name = f"layers.{i}.b"
            b_exp = (shape[1],) if len(shape) == 2 else ("?",)
            if b_name not in weights:
                problems.append(
                    f"missing tensor {b_name!r} (expected shape {b_exp}; biases must be given "
                    "for every layer or for none)"
                )
            elif tuple(np.shape(weights[b_name])) != b_exp:
                problems.append(
                    f"{b_name!r} has shape {tuple(np.shape(weights[b_name]))}, expected {b_exp}"
                )
    known = {f"layers.{i}.{p}" for i in range(n_linear) for p in ("W", "b")}
    for name in sorted(set(weights) - known):
        problems.append(f"unexpected tensor {name!r}")
    for name in sorted(set(weights) & known):
        if not np.isfinite(np.asarray(weights[name])).all():
            problems.append(f"{name!r} contains NaN/inf")
    if problems:
        raise ValueError(
            f"Invalid MLP weights in {source}: "
            + "; ".join(problems)
            + ". Expected tensors 'layers.{i}.W' of shape (in, out) and 'layers.{i}.b' of shape "
            "(out,), as written by MLP.state_arrays()."
        )
    # Every size is known here: a missing or non-2-D W was reported above.
    known_sizes = [int(s) for s in sizes if s is not None]
    return known_sizes[0], tuple(known_sizes[1:-1]), known_sizes[-1], bias


@cache
def _gelu_one() -> float:
    """``r1`` with ``gelu(r1) = 1``: bisection on [-1, 4] in float64 (method §A.1).

    gelu < 1 on [-1, 1] and is increasing beyond, so the bracket holds one root. The reference
    stops at tol 1e-11; bisecting down to adjacent floats keeps the folded constant at 1 to
    rounding, which the build relies on (``μ_last = 1``).
    """

    def gelu(v: float) -> float:
        return float(nn.functional.gelu(torch.tensor(v, dtype=torch.float64)))

    lo, hi = -1.0, 4.0
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if gelu(mid) < 1.0:
            lo = mid
        else:
            hi = mid
    return hi if abs(gelu(hi) - 1) <= abs(gelu(lo) - 1) else lo


def constant_preimage(activation: str) -> float | None:
    """The ``r1`` of method §A.1 with ``act(r1) = 1``; ``None`` where none exists (tanh)."""
    if activation == "relu":
        return 1.0
    if activation == "gelu":
        return _gelu_one()
    return None


def build_mlp_sections(
    state: Mapping[str, np.ndarray],
    node_layers: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    activation: Activation = "relu",
) -> SectionedModel:
    """The bias-folded sectioned MLP (method §A.1, "For MLPs").

    The flattened input is concatenated with 1. Each hidden layer becomes ``[W; b]`` (in+1 rows)
    with an extra output column ``(0, …, 0, r1)``, where ``act(r1) = 1`` (``r1 = 1`` for relu, a
    root for gelu), so every post-activation carries a trailing 1; the last layer is
    ``[W; b]`` with ``out`` columns. ``tanh`` never reaches 1: there the constant coordinate
    bypasses the activation (the same as relu's fold along the integration path α·f).

    Args:
        state: ``layers.{i}.W`` (in, out) and ``layers.{i}.b`` (out,) arrays, e.g.
            ``MLP.state_arrays()``; biases may be absent altogether (zero rows are folded).
        node_layers: where to cut, in forward order; default all of ``layers.0`` … ``output``.
        dtype: dtype of the folded weights (float64 for builds).
        activation: the hidden activation the weights were trained with.

    Returns:
        The sectioned model; its ``embed`` takes inputs of shape (batch, *features).

    Raises:
        ValueError: for invalid weights, an unknown activation or unknown node layers.
    """
    _check_activation(activation)
    input_size, hidden, output_size, bias = validate_mlp_weights(state)
    sizes = [input_size, *hidden, output_size]
    n_linear = len(sizes) - 1
    act = ACT_FNS[activation]
    r1 = constant_preimage(activation)

    folded = []
    for i in range(n_linear):
        w = torch.as_tensor(np.asarray(state[f"layers.{i}.W"]), dtype=dtype)
        b = (
            torch.as_tensor(np.asarray(state[f"layers.{i}.b"]), dtype=dtype)
            if bias
            else torch.zeros(sizes[i + 1], dtype=dtype)
        )
        w = torch.cat([w, b.unsqueeze(0)], dim=0)
        if i < n_linear - 1:
            col = torch.zeros(sizes[i] + 1, 1, dtype=dtype)
            col[-1, 0] = 1.0 if r1 is None else r1
            w = torch.cat([w, col], dim=1)
        folded.append(w)

    def embed(x: Tensor) -> Tensor:
        x = x.flatten(1).to(dtype)
        if x.shape[1] != input_size:
            raise ValueError(
                f"MLP inputs must have {input_size} features once flattened, got {x.shape[1]}."
            )
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=dtype)], dim=1).unsqueeze(1)

    def act_except_constant(h: Tensor) -> Tensor:
        return torch.cat([act(h[..., :-1]), h[..., -1:]], dim=-1)

    # Closed-form sections (lib.closed_form.mlp): their M′ and edges need no autograd.
    hidden_act = act if r1 is not None else act_except_constant

    def make_step(i: int) -> Step:
        w = folded[i]
        if i == n_linear - 1:
            return Step(f"layers.{i}", Linear(w))
        return Step(f"layers.{i}", ElementwiseMLP(w, None, hidden_act))

    steps = [make_step(i) for i in range(n_linear)]
    layers = mlp_node_layers(n_linear) if node_layers is None else tuple(node_layers)
    return build_sectioned_model(embed, steps, "output", layers)
