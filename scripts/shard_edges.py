"""Rule shard_edges: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.edges import shard_edges

run_stage(snakemake, shard_edges)  # noqa: F821 (Snakemake defines it)
