"""Rule attribute_heads: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.heads import attribute_heads

run_stage(snakemake, attribute_heads)  # noqa: F821 (Snakemake defines it)
