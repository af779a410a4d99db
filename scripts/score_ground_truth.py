"""Adapter for rule score_ground_truth."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.score_ground_truth(
    config.ModelConfig.model_validate(snakemake.params.model),
    list(snakemake.params.methods),
    snakemake.input.weights,
    list(snakemake.input.basis),
    list(snakemake.input.edges),
    list(snakemake.input.modules),
    snakemake.output.json,
)
