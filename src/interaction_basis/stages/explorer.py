"""Stage 8 (page): the interactive explorer page of an experiment (explorer/index.html, its
card files, and explorer.html, which opens it)."""

import logging
import os

import numpy as np

from interaction_basis import storage
from interaction_basis.config import InterpretConfig, ModelConfig
from interaction_basis.interpret.explorer import (
    MethodData,
    build_page,
    check_features,
    forwarding_page,
    head_roles_of,
)
from interaction_basis.kinds import interpretation

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
    heads: str | None,
    explorer: str,
    link: str,
) -> None:
    """The explorer's folder (``explorer``: index.html and its card files) from each method's
    basis, edges, modules and features (and, for the toy LMs trained here, the heads that write
    each feature), and ``link``, a page that opens it (the explorer's earlier address)."""
    head_data = storage.read_json(heads) if heads else None
    data = {}
    for m, bp, ep, mp, fp in zip(methods, basis, edges, modules, features, strict=True):
        bases = storage.read_bases(bp)
        described = storage.open_features(fp)
        check_features(described, bases, storage.read_attrs(bp)["config_sha256"], fp)
        roles = head_roles_of(head_data, m) if head_data else None
        data[m] = MethodData(bases, storage.read_edges(ep), storage.read_json(mp), described, roles)
    page = build_page(
        experiment,
        data,
        summary=storage.read_json(summary) if summary else None,
        evaluation=storage.read_json(evaluation) if evaluation else None,
        max_edges=interpret.max_edges,
        page_examples=interpret.page_examples,
        thumbnails=interpretation.get(model.kind).thumbnails(
            model, _shown_samples(data, interpret.page_examples)
        ),
    )
    log.info(
        "explorer page: %.2f MB, and %d card files of %.2f MB",
        len(page.html.encode()) / 1e6,
        len(page.side_files),
        sum(len(t.encode()) for t in page.side_files.values()) / 1e6,
    )
    storage.write_folder(explorer, page.files())
    folder = os.path.relpath(explorer, os.path.dirname(link) or ".")
    storage.write_text(link, forwarding_page(experiment, folder))


def _shown_samples(data: dict, n: int) -> set[int]:
    """The held-out samples whose examples the cards show."""
    wanted = set()
    for d in data.values():
        for layer in d.features.children:
            g = d.features[layer].ds
            for key in ("top_sample", "bottom_sample"):
                wanted |= {int(s) for s in np.unique(g[key].values[:n])}
    return wanted
