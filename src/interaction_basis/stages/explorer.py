"""Stage 8 (page): the interactive explorer page of an experiment (explorer.html)."""

import logging

import numpy as np

from interaction_basis import io, kinds
from interaction_basis.config import InterpretConfig, ModelConfig
from interaction_basis.explorer import MethodData, build_page, check_features

log = logging.getLogger(__name__)


def build_explorer(
    experiment: str,
    model: ModelConfig,
    interpret: InterpretConfig,
    methods: list[str],
    basis: list[str],
    edges: list[str],
    modules: list[str],
    features: list[str],
    summary: str | None,
    evaluation: str | None,
    explorer: str,
) -> None:
    """explorer.html from each method's basis, edges, modules and features."""
    model_cfg, interpret_cfg = model, interpret
    basis_paths, edges_paths, modules_paths, features_paths = basis, edges, modules, features
    summary_path, evaluation_path, out_path = summary, evaluation, explorer
    data = {}
    for m, bp, ep, mp, fp in zip(
        methods, basis_paths, edges_paths, modules_paths, features_paths, strict=True
    ):
        bases = io.read_bases(bp)
        features = io.read_features(fp)
        check_features(features, bases, io.read_attrs(bp)["config_sha256"], fp)
        modules = io.read_json(mp) if mp else None
        data[m] = MethodData(bases, io.read_edges(ep), modules, features)
    page = build_page(
        experiment,
        data,
        summary=io.read_json(summary_path) if summary_path else None,
        evaluation=io.read_json(evaluation_path) if evaluation_path else None,
        max_edges=interpret_cfg.max_edges,
        page_examples=interpret_cfg.page_examples,
        thumbnails=kinds.get(model_cfg.kind).thumbnails(
            model_cfg, _shown_samples(data, interpret_cfg.page_examples)
        ),
    )
    log.info("explorer page: %.2f MB", len(page.encode()) / 1e6)
    io.write_text(out_path, page)


def _shown_samples(data: dict, n: int) -> set[int]:
    """The held-out samples whose examples the cards show."""
    wanted = set()
    for d in data.values():
        for layer in d.features.children:
            g = d.features[layer].ds
            for key in ("top_sample", "bottom_sample"):
                wanted |= {int(s) for s in np.unique(g[key].values[:n])}
    return wanted
