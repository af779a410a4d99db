"""Rule make_report_figures: the stage function of the same name (see interaction_basis.seam)."""

from interaction_basis.seam import run_stage
from interaction_basis.stages.report import make_report_figures

run_stage(snakemake, make_report_figures)  # noqa: F821 (Snakemake defines it)
