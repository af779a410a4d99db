"""Rule fit_layer: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.basis import fit_layer

run_stage(snakemake, fit_layer)  # noqa: F821 (Snakemake defines it)
