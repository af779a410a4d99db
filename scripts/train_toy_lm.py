"""Adapter for rule train_toy_lm."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import stages, train_lm

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
train_lm.train_toy_lm_stage(
    train_lm.ToyLMConfig.model_validate(snakemake.params.toy_lm),
    snakemake.output.model,
    snakemake.output.corpus,
    snakemake.output.metrics,
)
