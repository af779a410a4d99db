"""Rule score_ground_truth: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.ground_truth import score_ground_truth

run_stage(snakemake, score_ground_truth)  # noqa: F821 (Snakemake defines it)
