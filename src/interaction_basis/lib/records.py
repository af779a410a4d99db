"""The records stages hand to each other through storage: a layer's fitted basis, its
statistics, and partial sums before their division. Containers only: fitting is in ``lib.basis``
and ``lib.fit``, so editing the math there does not rerun the stages that merely store them."""

from collections.abc import Callable, Iterable
from typing import NamedTuple

from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.summation import CompensatedSum

# Each call: a fresh iterable (io gives a sized one, for an ETA) of one layer's activations.
BatchSource = Callable[[str], Iterable[Tensor]]


class Basis(NamedTuple):
    """A fitted basis for one node layer.

    Attributes:
        C: (orig, feature) map from activations to features.
        C_pinv: (feature, orig) the reconstruction map (not ``pinv(C)``).
        importance: (feature,) Λ for LIB, the Gram eigenvalues D for PCA, ones for neuron.
        n_masked: leading features excluded from the rotation (constant, LN variance).
    """

    C: Float[Tensor, "orig feature"]
    C_pinv: Float[Tensor, "feature orig"]
    importance: Float[Tensor, " feature"]
    n_masked: int


class LayerTraits(NamedTuple):
    """What the generic maths must know about a node layer, declared where the model makes the
    layer (``models.sectioned.Step``) and stored with its statistics."""

    #: The activations end with the folded constant 1 (method §A.1); the logits do not.
    constant: bool = True
    #: Coordinate 0 is a LayerNorm's variance, kept out of the rotation as its own node
    #: (method §A.3).
    variance_first: bool = False


class LayerStats(NamedTuple):
    """Mean and centred Gram of one node layer over ``count`` (sample, position) pairs."""

    mean: Float[Tensor, " d"]
    gram: Float[Tensor, "d d"]
    count: int  # type: ignore[assignment]  # (shadows tuple.count)
    traits: LayerTraits


class Partial(NamedTuple):
    """A compensated sum over (sample, position) pairs and their count, before the division."""

    total: CompensatedSum
    count: int  # type: ignore[assignment]  # (shadows tuple.count)

    def mean(self) -> Tensor:
        return self.total.value() / self.count


def add_partials(parts: Iterable[Partial]) -> Partial:
    parts = list(parts)
    if not parts:
        raise ValueError("No partial sums to add.")
    total = parts[0].total
    for p in parts[1:]:
        total = total.merge(p.total)
    return Partial(total, sum(p.count for p in parts))
