"""Rule download_dataset: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.downloads import download_dataset

run_stage(snakemake, download_dataset)  # noqa: F821 (Snakemake defines it)
