"""Adapter for rule ablate_nodes."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, evaluation

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
evaluation.set_threads(snakemake.threads)
evaluation.ablate_nodes(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.EvaluateConfig.model_validate(snakemake.params.evaluate),
    snakemake.input.weights,
    snakemake.input.basis,
    snakemake.output[0],
    snakemake.input.tokens or None,
)
