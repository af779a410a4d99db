"""Rule cluster_graph: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.cluster import cluster_graph

run_stage(snakemake, cluster_graph)  # noqa: F821 (Snakemake defines it)
