"""Stage 6b: features and modules scored against a network's planted modules (method §H)."""

import logging

from interaction_basis import storage
from interaction_basis.config import ModelConfig
from interaction_basis.evaluate.ground_truth import score_method
from interaction_basis.kinds import ground_truth, network

log = logging.getLogger(__name__)


def score_ground_truth(
    model: ModelConfig,
    methods: list[str],
    weights: str,
    basis: list[str],
    edges: list[str],
    modules: list[str],
    json: str,
) -> None:
    """Block purity, cross-block edges and module ARI of every method against the planted
    blocks."""
    arrays = storage.read_weights(weights)
    network.get(model.kind).validate_weights(model, arrays, weights)
    scores = {}
    for method, basis_path, edges_path, modules_path in zip(
        methods, basis, edges, modules, strict=True
    ):
        bases = storage.read_bases(basis_path)
        planted = ground_truth.get(model.kind).planted_blocks(model, arrays, list(bases))
        if planted is None:
            raise ValueError(f"model.kind {model.kind!r} has no planted modules to score against.")
        scores[method] = score_method(
            bases, storage.read_edges(edges_path), storage.read_json(modules_path), *planted
        )
        s = scores[method]
        log.info("%s: min purity %s, ARI %s", method, s["min_purity"], s["ari"])
    storage.write_json(json, scores)
