"""Rule tokenize_dataset: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.tokens import tokenize_dataset

run_stage(snakemake, tokenize_dataset)  # noqa: F821 (Snakemake defines it)
