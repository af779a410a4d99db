"""Rule summarize_experiment: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.summary import summarize_experiment

run_stage(snakemake, summarize_experiment)  # noqa: F821 (Snakemake defines it)
