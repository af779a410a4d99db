"""Rule shard_m_dash: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.basis import shard_m_dash

run_stage(snakemake, shard_m_dash)  # noqa: F821 (Snakemake defines it)
