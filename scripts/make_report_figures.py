"""Adapter for rule make_report_figures."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import evaluation

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
evaluation.set_threads(snakemake.threads)
evaluation.make_report_figures(
    snakemake.wildcards.experiment,
    list(snakemake.params.methods),
    list(snakemake.input.nodes),
    list(snakemake.input.edge_ablation),
    list(snakemake.input.modules),
    list(snakemake.input.edges),
    snakemake.output.json,
    snakemake.output.nodes,
    snakemake.output.edges,
    snakemake.output.distribution,
    snakemake.output.modules,
)
