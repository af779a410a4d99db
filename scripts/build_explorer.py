"""Rule build_explorer: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.explorer import build_explorer

run_stage(snakemake, build_explorer)  # noqa: F821 (Snakemake defines it)
