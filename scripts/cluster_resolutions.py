"""Rule cluster_resolutions: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.cluster import cluster_resolutions

run_stage(snakemake, cluster_resolutions)  # noqa: F821 (Snakemake defines it)
