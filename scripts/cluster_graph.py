"""Adapter for rule cluster_graph."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.cluster_graph(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.ExtractConfig.model_validate(snakemake.params.extract),
    config.ClusterConfig.model_validate(snakemake.params.cluster),
    snakemake.input.weights,
    snakemake.input.basis,
    snakemake.input.edges,
    snakemake.output.modules,
    snakemake.output.graph,
)
