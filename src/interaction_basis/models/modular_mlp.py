"""The planted-module MLP (method §H): constructed, not trained, with a known answer.

Every linear layer is ``block_diag(B1, B2)``, so the two coordinate blocks never interact: the
reference implementation's sanity case for LIB, PCA and the neuron basis. The parameter names,
defaults and random draws are the reference's (``modular_mlp_config``), so a reference config
gives the same network.

The **hidden** variant (not in the reference) mixes every hidden layer with a fixed random
orthogonal ``Q_i`` (Haar-distributed, seeded by ``hidden_seed``) and un-mixes it in the next
linear layer: node layer ``layers.i`` holds ``act(·) Q_i`` and linear layer ``i`` applies
``Q_iᵀ W_i``. The function from input to output is unchanged; the blocks are invisible in the
neuron basis of the hidden layers. The input (``layers.0``) and the output are not mixed.

Weights are stored as the reference's ``layers.{i}.W`` (in, out) and ``layers.{i}.b`` plus, for
the hidden variant, ``mixing.{i}`` (``Q_i``, width × width) for ``i = 1 … n_hidden_layers``.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.config import Activation, ModularMLPConfig
from interaction_basis.lib.closed_form.mlp import ElementwiseMLP, Linear
from interaction_basis.models import DTYPES
from interaction_basis.models.mlp import (
    ACT_FNS,
    ACTIVATIONS,
    constant_preimage,
    mlp_node_layers,
)
from interaction_basis.models.sectioned import SectionedModel, Step, build_sectioned_model

#: |QᵀQ − I| above this marks a stored mixing matrix as not orthogonal (float64 QR gives ~1e-15).
ORTHOGONALITY_TOLERANCE = 1e-10


def compute_block_labels(width: int, first_block: int) -> np.ndarray:
    """The planted block (0 or 1) of each coordinate."""
    return (np.arange(width) >= first_block).astype(np.int64)


def generate_block_diagonal_weights(cfg: ModularMLPConfig) -> Float[Tensor, "width width"]:
    """One layer's ``block_diag(B1, B2)``, drawn as the reference does: the generator is
    seeded with ``seed``, then ``B1`` is drawn, then ``B2``, in ``cfg.dtype`` (float32 by
    default, as the reference; the model is cast to the run's dtype when it is built)."""
    dtype = DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.seed)
    w1 = cfg.first_block
    w2 = cfg.width - w1
    blocks = []
    for scale, n in zip(cfg.weight_variances, (w1, w2), strict=True):
        if cfg.weight_equal_columns:
            # randn(1, n).repeat(n, 1).T: entry (i, j) is draw i, so every column is the same.
            blocks.append(scale * torch.randn(1, n, dtype=dtype, generator=gen).repeat(n, 1).T)
        else:
            blocks.append(scale * torch.randn(n, n, dtype=dtype, generator=gen))
    return torch.block_diag(*blocks)


def draw_orthogonal(n: int, gen: torch.Generator) -> Float[Tensor, "n n"]:
    """A Haar-distributed orthogonal matrix: QR of a Gaussian with R's diagonal made positive."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    return q * torch.sign(torch.diagonal(r))


def build_modular_mlp_weights(cfg: ModularMLPConfig) -> dict[str, np.ndarray]:
    """The network's arrays: ``layers.{i}.W``/``.b`` and, if hidden, ``mixing.{i}``."""
    out: dict[str, np.ndarray] = {}
    for i in range(cfg.n_hidden_layers + 1):
        w = generate_block_diagonal_weights(cfg)  # re-seeded: the same matrix every layer
        out[f"layers.{i}.W"] = w.numpy()
        out[f"layers.{i}.b"] = np.full(cfg.width, cfg.bias, dtype=w.numpy().dtype)
    if cfg.hidden:
        gen = torch.Generator().manual_seed(cfg.hidden_seed)
        for i in range(1, cfg.n_hidden_layers + 1):
            out[f"mixing.{i}"] = draw_orthogonal(cfg.width, gen).numpy()
    return out


def validate_modular_mlp_weights(
    weights: Mapping[str, np.ndarray], source: str = "weights"
) -> tuple[int, int, bool]:
    """Check names, shapes, finiteness and the mixings' orthogonality; one error lists every
    problem.

    Returns:
        ``(n_linear, width, hidden)``.
    """
    n_linear = sum(1 for k in weights if k.startswith("layers.") and k.endswith(".W"))
    if n_linear < 2 or "layers.0.W" not in weights:
        raise ValueError(
            f"Invalid modular MLP weights in {source}: expected 'layers.{{i}}.W' for i = 0 … "
            "n_hidden_layers (at least two); rebuild them with rule train_model."
        )
    width = int(np.shape(weights["layers.0.W"])[-1])
    hidden = any(k.startswith("mixing.") for k in weights)
    expected: dict[str, tuple[int, ...]] = {
        f"layers.{i}.W": (width, width) for i in range(n_linear)
    }
    expected |= {f"layers.{i}.b": (width,) for i in range(n_linear)}
    if hidden:
        expected |= {f"mixing.{i}": (width, width) for i in range(1, n_linear)}
    problems = [f"missing tensor {k!r}" for k in expected if k not in weights]
    problems += [f"unexpected tensor {k!r}" for k in sorted(set(weights) - set(expected))]
    for k, shape in expected.items():
        if k not in weights:
            continue
        a = np.asarray(weights[k])
        if a.shape != shape:
            problems.append(f"{k!r} has shape {a.shape}, expected {shape}")
        elif not np.isfinite(a).all():
            problems.append(f"{k!r} contains NaN/inf")
        elif k.startswith("mixing."):
            err = np.abs(a.T.astype(np.float64) @ a - np.eye(width)).max()
            if err > ORTHOGONALITY_TOLERANCE:
                problems.append(f"{k!r} is not orthogonal (|QᵀQ − I| = {err:.1e})")
    if problems:
        raise ValueError(f"Invalid modular MLP weights in {source}: " + "; ".join(problems) + ".")
    return n_linear, width, hidden


def mixing_of(weights: Mapping[str, np.ndarray], layer: str) -> np.ndarray | None:
    """``Q`` of a node layer (its activations are the plain ones times ``Q``), or ``None``."""
    return weights.get(f"mixing.{layer.split('.')[-1]}") if layer.startswith("layers.") else None


def build_modular_mlp_sections(
    weights: Mapping[str, np.ndarray],
    node_layers: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    activation: Activation = "relu",
) -> SectionedModel:
    """The bias-folded sectioned network (method §A.1, "For MLPs"), mixings included.

    Section ``i`` maps ``[a_i, 1]`` to ``[act([a_i, 1] W̃_i) Q_{i+1}, 1]`` where ``W̃_i`` is
    ``[Q_iᵀ W_i; b_i]`` with the constant column of :func:`~.mlp.build_mlp_sections` (``Q = I``
    where there is no mixing); the last section is linear.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}.")
    n_linear, width, _ = validate_modular_mlp_weights(weights)
    act = ACT_FNS[activation]
    r1 = constant_preimage(activation)

    def tensor(name: str) -> Tensor:
        return torch.as_tensor(np.asarray(weights[name]), dtype=dtype)

    def mixing(i: int) -> Tensor:
        key = f"mixing.{i}"
        return tensor(key) if key in weights else torch.eye(width, dtype=dtype)

    def make_step(i: int) -> Step:
        w = torch.cat([mixing(i).T @ tensor(f"layers.{i}.W"), tensor(f"layers.{i}.b")[None]])
        if i == n_linear - 1:
            return Step(f"layers.{i}", Linear(w))
        col = torch.zeros(width + 1, 1, dtype=dtype)
        col[-1, 0] = 1.0 if r1 is None else r1
        w = torch.cat([w, col], dim=1)
        mixed = f"mixing.{i + 1}" in weights
        w_out = torch.block_diag(mixing(i + 1), torch.ones(1, 1, dtype=dtype)) if mixed else None

        def hidden_act(h: Tensor) -> Tensor:
            # tanh never reaches 1: the constant coordinate bypasses it (as in models.mlp).
            return act(h) if r1 is not None else torch.cat([act(h[..., :-1]), h[..., -1:]], -1)

        return Step(f"layers.{i}", ElementwiseMLP(w, w_out, hidden_act))

    def embed(x: Tensor) -> Tensor:
        x = x.flatten(1).to(dtype)
        if x.shape[1] != width:
            raise ValueError(f"Block vectors must have length {width}, got {x.shape[1]}.")
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=dtype)], dim=1).unsqueeze(1)

    steps = [make_step(i) for i in range(n_linear)]
    layers = mlp_node_layers(n_linear) if node_layers is None else tuple(node_layers)
    return build_sectioned_model(embed, steps, "output", layers)


def modular_mlp_forward(
    weights: Mapping[str, np.ndarray], x: Float[Tensor, "batch width"], activation: Activation
) -> Float[Tensor, "batch width"]:
    """The plain network ``x W_0 + b_0 → act → … → x W_n + b_n`` (mixings ignored): the
    reference's forward pass, for tests. The weights are cast to the dtype of ``x`` (the
    reference casts the model to the run's dtype after drawing it)."""
    n_linear, _, _ = validate_modular_mlp_weights(weights)
    dtype = x.dtype

    def tensor(name: str) -> Tensor:
        return torch.as_tensor(np.asarray(weights[name]), dtype=dtype)

    for i in range(n_linear):
        x = x @ tensor(f"layers.{i}.W") + tensor(f"layers.{i}.b")
        if i < n_linear - 1:
            x = ACT_FNS[activation](x)
    return x
