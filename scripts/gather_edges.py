"""Rule gather_edges: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.edges import gather_edges

run_stage(snakemake, gather_edges)  # noqa: F821 (Snakemake defines it)
