"""Adapter for rule cluster_resolutions."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, evaluation

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
evaluation.set_threads(snakemake.threads)
evaluation.cluster_resolutions(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.ExtractConfig.model_validate(snakemake.params.extract).dtype,
    config.ClusterConfig.model_validate(snakemake.params.cluster),
    config.EvaluateConfig.model_validate(snakemake.params.evaluate),
    snakemake.input.weights,
    snakemake.input.basis,
    snakemake.input.edges,
    snakemake.input.ablation,
    snakemake.output[0],
)
