"""Rule extract_activations: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.extract import extract_activations

run_stage(snakemake, extract_activations)  # noqa: F821 (Snakemake defines it)
