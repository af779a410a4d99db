"""Adapter for rule attribute_heads."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import head_attribution, stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
head_attribution.attribute_heads_stage(
    snakemake.input.model,
    snakemake.input.tokens,
    dict(zip(snakemake.params.methods, snakemake.input.basis, strict=True)),
    snakemake.output.json,
    snakemake.output.md,
)
