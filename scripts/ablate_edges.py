"""Rule ablate_edges: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.evaluate import ablate_edges

run_stage(snakemake, ablate_edges)  # noqa: F821 (Snakemake defines it)
