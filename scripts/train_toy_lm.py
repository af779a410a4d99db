"""Rule train_toy_lm: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.toy_lm import train_toy_lm

run_stage(snakemake, train_toy_lm)  # noqa: F821 (Snakemake defines it)
