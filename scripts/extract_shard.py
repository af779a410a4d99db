"""Adapter for rule extract_shard."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.extract_activations(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.ExtractConfig.model_validate(snakemake.params.extract),
    snakemake.input.weights,
    snakemake.output.acts,
    snakemake.input.tokens or None,
    shard=int(snakemake.wildcards.shard),
)
