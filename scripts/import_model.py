"""Rule import_model: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.model import import_model

run_stage(snakemake, import_model)  # noqa: F821 (Snakemake defines it)
