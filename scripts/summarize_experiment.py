"""Adapter for rule summarize_experiment."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.summarize(
    snakemake.wildcards.experiment,
    list(snakemake.params.methods),
    snakemake.input.metrics or None,
    list(snakemake.input.basis),
    list(snakemake.input.edges),
    list(snakemake.input.modules),
    snakemake.output.md,
    snakemake.output.json,
    snakemake.output.spectra,
    snakemake.output.graph,
    snakemake.input.ground_truth or None,
)
