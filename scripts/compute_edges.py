"""Rule compute_edges: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.edges import compute_edges

run_stage(snakemake, compute_edges)  # noqa: F821 (Snakemake defines it)
