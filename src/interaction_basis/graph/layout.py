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
    return layout_layers(modules, {layer: (n_features, constant)})[layer]


def layout_layers(
    modules: Mapping | None, layers: Mapping[str, tuple[int, bool]]
) -> dict[str, LayerLayout]:
    """:func:`layout_layer` of every layer in ``layers`` (name -> its number of features and
    whether feature 0 is constant), reading the modules once: a GPT-2 graph has 10⁵ nodes
    and 75 layers, and reading them per layer dominated the explorer's build."""
    ranked = module_order(modules)
    rank = {c: i for i, c in enumerate(ranked)}
    module = {layer: [NO_MODULE] * n for layer, (n, _) in layers.items()}
    for node in (modules or {}).get("nodes", []):
        mods = module.get(node["layer"])
        if mods is not None and node["cluster"] in rank and node["index"] < len(mods):
            mods[node["index"]] = node["cluster"]
    out = {}
    for layer, (n, constant) in layers.items():
        mods = module[layer]
        first = [0] if constant and n else []
        rest = list(range(1 if first else 0, n))
        order = {i: rank.get(mods[i], len(ranked)) for i in rest}
        rest.sort(key=lambda i: (order[i], i))
        out[layer] = LayerLayout(first + rest, mods)
    return out
