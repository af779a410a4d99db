"""Adapter for rule build_explorer."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, interpret, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
interpret.build_explorer(
    snakemake.wildcards.experiment,
    config.ModelConfig.model_validate(snakemake.params.model),
    config.InterpretConfig.model_validate(snakemake.params.interpret),
    snakemake.params.methods,
    snakemake.input.basis,
    snakemake.input.edges,
    snakemake.input.modules,
    snakemake.input.features,
    snakemake.input.summary,
    snakemake.input.evaluation or None,
    snakemake.output[0],
)
