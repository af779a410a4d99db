"""Rule ablate_nodes: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.evaluate import ablate_nodes

run_stage(snakemake, ablate_nodes)  # noqa: F821 (Snakemake defines it)
