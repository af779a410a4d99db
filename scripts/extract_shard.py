"""Rule extract_shard: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.extract import extract_shard

run_stage(snakemake, extract_shard)  # noqa: F821 (Snakemake defines it)
