"""Rule download_model: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.downloads import download_model

run_stage(snakemake, download_model)  # noqa: F821 (Snakemake defines it)
