"""Rule interpret_features: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.interpret import interpret_features

run_stage(snakemake, interpret_features)  # noqa: F821 (Snakemake defines it)
