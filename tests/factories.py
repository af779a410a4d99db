"""Tiny models, data and builds shared by tests (the package never imports this)."""

import math

import numpy as np
import torch

from interaction_basis.lib.basis import Truncation
from interaction_basis.lib.fit import build_in_memory
from interaction_basis.models.modadd import build_modadd_sections, modadd_shapes
from interaction_basis.models.sectioned import SectionedModel, Step, build_sectioned_model

TINY_MODADD = dict(d_vocab=7, n_ctx=3, d_model=8, n_heads=2, d_head=4, d_mlp=16)


def random_modadd_weights(seed: int = 0, **dims: int) -> dict[str, np.ndarray]:
    """Random TransformerLens-named weights, biases included (nonzero, to exercise folding)."""
    rng = np.random.default_rng(seed)
    shapes = modadd_shapes(**{**TINY_MODADD, **dims})
    return {
        k: rng.normal(0, 1 / math.sqrt(s[-2] if len(s) > 1 else 4), s) for k, s in shapes.items()
    }


def tiny_modadd(seed: int = 0) -> tuple[SectionedModel, torch.Tensor]:
    """A tiny random 1-layer transformer and every (a, b, =) input for modulus 6."""
    model = build_modadd_sections(random_modadd_weights(seed))
    a, b = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((36,), 6)], dim=1)
    return model, tokens


def tiny_mlp(
    seed: int = 0, sizes: tuple[int, ...] = (6, 9, 7, 4)
) -> tuple[SectionedModel, torch.Tensor]:
    """A tiny bias-folded ReLU MLP (method §A.1) and random inputs."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = torch.randn(n_in + 1, n_out, generator=gen, dtype=torch.float64) / math.sqrt(n_in)
        last = i == len(sizes) - 2
        if not last:
            const = torch.zeros(n_in + 1, 1, dtype=torch.float64)
            const[-1] = 1.0
            w = torch.cat([w, const], dim=1)

        def fn(x, w=w, last=last):
            y = x @ w
            return y if last else torch.relu(y)

        steps.append(Step(f"layers.{i}", fn))

    def embed(x):
        return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1).unsqueeze(1)

    model = build_sectioned_model(embed, steps, "output", [s.name for s in steps] + ["output"])
    return model, torch.randn(40, sizes[0], generator=gen, dtype=torch.float64)


def full_build(model: SectionedModel, inputs: torch.Tensor, method: str = "lib", **kwargs):
    """Statistics, bases and edges of a model on in-memory inputs (batches of 16, relative
    truncation 1e-10 unless given)."""
    kwargs.setdefault("truncation", Truncation(1e-10, relative=True))
    kwargs.setdefault("batch_size", 16)
    acts, stats, methods = build_in_memory(model, inputs, [method], **kwargs)
    return acts, stats, *methods[method]
