"""Adapter for rule fit_layer."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.fit_layer(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.ExtractConfig.model_validate(snakemake.params.extract),
    config.BasisConfig.model_validate(snakemake.params.basis),
    snakemake.wildcards.method,
    snakemake.wildcards.layer,
    snakemake.input.stats,
    list(snakemake.input.m_dash),
    snakemake.output.basis,
)
