"""Adapter for rule interpret_features."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, interpret, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
interpret.interpret_features(
    config.ModelConfig.model_validate(snakemake.params.model),
    config.ExtractConfig.model_validate(snakemake.params.extract),
    config.InterpretConfig.model_validate(snakemake.params.interpret),
    snakemake.wildcards.method,
    snakemake.input.weights,
    snakemake.input.basis,
    snakemake.output[0],
    snakemake.input.tokens or None,
)
