"""Adapter for rule gather_edges."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.gather_edges(
    config.EdgesConfig.model_validate(snakemake.params.edges),
    snakemake.input.basis,
    list(snakemake.input.parts),
    snakemake.output.edges,
)
