"""Adapter for rule download_model (the only scripts that use the network)."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import config, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.download_model(
    config.ModelConfig.model_validate(snakemake.params.model), snakemake.output[0]
)
