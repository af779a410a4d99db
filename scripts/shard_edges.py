"""Adapter for rule shard_edges."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.compute_shard_edges(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.ExtractConfig.model_validate(snakemake.params.extract),
    config.EdgesConfig.model_validate(snakemake.params.edges),
    snakemake.input.weights,
    snakemake.input.acts,
    snakemake.input.basis,
    snakemake.output[0],
)
