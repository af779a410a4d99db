"""Models as chains of sections between named node layers (method §A.1).

A model is described by an ``embed`` function (raw inputs to the activations of the first
possible node layer) and an ordered list of :class:`Step`s. Each step is named after the node
layer at its *input*; the name of the final activations is ``output_name``. Choosing node layers
composes the steps between consecutive chosen layers into one section. Every activation is a
``(batch, pos, d)`` tensor whose last coordinate is the folded constant 1 (except logits).
Any architecture (mod-add transformer, MLP, HF causal LM) only has to provide steps.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.closed_form.per_token import PerToken
from interaction_basis.lib.records import LayerTraits

Activations = Float[Tensor, "batch pos d"]
SectionFn = Callable[[Tensor], Tensor]
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Step:
    """One atomic piece of a model; ``name`` is the node layer at its input, whose traits the
    step declares where the architecture makes the layer."""

    name: str
    fn: SectionFn
    #: The activations end with the folded constant 1 (method §A.1); a model's final outputs
    #: (the logits) never do.
    constant: bool = True
    #: Coordinate 0 is a LayerNorm's variance, kept out of the rotation as its own node
    #: (method §A.3).
    variance_first: bool = False


def identity(x: Tensor) -> Tensor:
    """An alias step (a second name for the same activations): it drops out of compositions,
    so that the step next to it keeps its closed form."""
    return x


def _compose(fns: Sequence[SectionFn]) -> SectionFn:
    fns = [fn for fn in fns if fn is not identity] or [PerToken(identity)]
    if len(fns) == 1:  # the step itself, so that its closed-form Jacobians stay visible
        return fns[0]

    def composed(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    if all(isinstance(fn, PerToken) for fn in fns):  # still one position at a time
        return PerToken(composed)
    return composed


@dataclass(frozen=True)
class SectionedModel:
    """A model cut into sections at ``node_layers``.

    Attributes:
        node_layers: the chosen node layers, in forward order (their traits, see
            :class:`Step`, in ``constant_free`` and ``variance_first``).
        embed: raw inputs -> activations at ``node_layers[0]`` (never differentiated).
        sections: ``sections[l]`` maps activations at ``node_layers[l]`` to those at
            ``node_layers[l + 1]``.
        device: where the weights live; inputs and activations are moved there to run.
    """

    node_layers: tuple[str, ...]
    embed: Callable[[Tensor], Tensor]
    sections: tuple[SectionFn, ...]
    device: torch.device = CPU
    #: Node layers without the folded constant coordinate (the logits).
    constant_free: frozenset[str] = frozenset()
    #: Node layers whose coordinate 0 is a LayerNorm's variance.
    variance_first: frozenset[str] = frozenset()

    def traits(self, layer: str) -> LayerTraits:
        """What the generic maths must know about ``layer`` (declared by its :class:`Step`)."""
        return LayerTraits(layer not in self.constant_free, layer in self.variance_first)

    def activations(self, inputs: Tensor) -> dict[str, Activations]:
        """Activations at every node layer for one batch of raw inputs."""
        x = self.embed(inputs)
        acts = {self.node_layers[0]: x}
        for name, section in zip(self.node_layers[1:], self.sections, strict=True):
            x = section(x)
            acts[name] = x
        return acts

    def forward_from(self, layer: str, x: Activations) -> Tensor:
        """Run the model from node layer ``layer`` to the end."""
        start = self.node_layers.index(layer)
        for section in self.sections[start:]:
            x = section(x)
        return x


def build_sectioned_model(
    embed: Callable[[Tensor], Tensor],
    steps: Sequence[Step],
    output_name: str,
    node_layers: Sequence[str],
    device: torch.device = CPU,
) -> SectionedModel:
    """Cut a model given as steps at the chosen node layers; ``output_name`` names the final
    outputs (the logits: no constant coordinate).

    Raises:
        ValueError: if a node layer is unknown, repeated, or out of forward order.
    """
    available = [s.name for s in steps] + [output_name]
    unknown = [n for n in node_layers if n not in available]
    if unknown:
        raise ValueError(
            f"Unknown node layer(s) {unknown}; this model has: {', '.join(available)}."
        )
    if len(node_layers) < 2:
        raise ValueError(f"Need at least two node layers, got {list(node_layers)}.")
    positions = [available.index(n) for n in node_layers]
    if positions != sorted(set(positions)):
        raise ValueError(
            f"Node layers {list(node_layers)} must be distinct and in forward order: "
            f"{', '.join(available)}."
        )
    fns = [s.fn for s in steps]
    sections = tuple(_compose(fns[a:b]) for a, b in zip(positions, positions[1:]))
    pre = fns[: positions[0]]

    def full_embed(inputs: Tensor) -> Tensor:
        return _compose(pre)(embed(inputs))

    chosen = set(node_layers)
    return SectionedModel(
        tuple(node_layers),
        full_embed,
        sections,
        device,
        constant_free=frozenset({s.name for s in steps if not s.constant} | {output_name}) & chosen,
        variance_first=frozenset(s.name for s in steps if s.variance_first) & chosen,
    )


def check_activations(x: Tensor, layer: str) -> None:
    """Reject activations that would silently poison Grams and Jacobians."""
    if x.ndim != 3:
        raise ValueError(
            f"Activations at {layer!r} must be (batch, pos, d), got shape {tuple(x.shape)}."
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(
            f"Activations at {layer!r} contain {bad} NaN/inf values; check the model weights "
            "and inputs (float32 overflow? a diverged training run?)."
        )
