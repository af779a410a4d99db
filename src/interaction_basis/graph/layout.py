"""Where each node of a layered interaction graph is drawn: module blocks within each layer.

Shared by the static figures and the explorer page, so that both show the modules the same way:
every layer lists its features module by module (the same module order in every layer, the
largest module first), then the features in no module of two or more nodes, each group in
basis order (by importance). The constant feature, if any, stays on top of its layer.
"""

from collections.abc import Mapping
from typing import NamedTuple

NO_MODULE = -1


class LayerLayout(NamedTuple):
    """One layer: ``order[k]`` is the feature drawn in slot ``k``; ``module[i]`` the module of
    feature ``i`` (``NO_MODULE`` for singletons and features outside the graph)."""

    order: list[int]
    module: list[int]


def module_order(modules: Mapping | None) -> list[int]:
    """Modules of two or more nodes, largest first (ties by id)."""
    if not modules:
        return []
    sizes: dict[int, int] = {}
    for node in modules["nodes"]:
        sizes[node["cluster"]] = sizes.get(node["cluster"], 0) + 1
    return sorted((c for c, s in sizes.items() if s > 1), key=lambda c: (-sizes[c], c))


def layout_layer(
    modules: Mapping | None, layer: str, n_features: int, constant: bool
) -> LayerLayout:
    """The drawing order of one layer's ``n_features`` features (see the module docstring)."""
    ranked = module_order(modules)
    rank = {c: i for i, c in enumerate(ranked)}
    module = [NO_MODULE] * n_features
    for node in (modules or {}).get("nodes", []):
        if node["layer"] == layer and node["cluster"] in rank and node["index"] < n_features:
            module[node["index"]] = node["cluster"]
    first = [0] if constant and n_features else []
    rest = [i for i in range(n_features) if i not in first]
    rest.sort(key=lambda i: (rank.get(module[i], len(ranked)), i))
    return LayerLayout(first + rest, module)
