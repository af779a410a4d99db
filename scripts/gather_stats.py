"""Adapter for checkpoint gather_stats."""

import logging
from typing import TYPE_CHECKING

from interaction_basis import stages

if TYPE_CHECKING:
    from snakemake.script import snakemake

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
stages.set_threads(snakemake.threads)
stages.gather_stats(list(snakemake.input.shards), snakemake.output.stats)
