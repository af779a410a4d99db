"""Rule gather_stats: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.extract import gather_stats

run_stage(snakemake, gather_stats)  # noqa: F821 (Snakemake defines it)
