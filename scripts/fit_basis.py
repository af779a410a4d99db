"""Rule fit_basis: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.basis import fit_basis

run_stage(snakemake, fit_basis)  # noqa: F821 (Snakemake defines it)
