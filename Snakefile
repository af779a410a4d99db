# interaction-basis: LIB and PCA bases, interaction graphs and modules for each configured
# experiment. Run `snakemake --cores N`; see README.md.
from snakemake.utils import min_version

from interaction_basis.config import check_yaml

min_version("9.19")


# Snakemake's message for a config file that is not valid YAML names neither file nor line.
check_yaml(f"{workflow.basedir}/config/config.yaml")


configfile: f"{workflow.basedir}/config/config.yaml"


report: f"{workflow.basedir}/report/workflow.rst"


include: "rules/common.smk"
include: "rules/toy_lm.smk"
include: "rules/downloads.smk"
include: "rules/model.smk"
include: "rules/tokens.smk"
include: "rules/extract.smk"
include: "rules/basis.smk"
include: "rules/edges.smk"
include: "rules/cluster.smk"
include: "rules/evaluate.smk"
include: "rules/ground_truth.smk"
include: "rules/summary.smk"
include: "rules/report.smk"
include: "rules/interpret.smk"
include: "rules/explorer.smk"
include: "rules/heads.smk"


# A run (not a dry run) whose language-model stores would not fit on the results folder's
# filesystem stops here, before any job (the sizes are printed at planning).
onstart:
    check_disk_space()


# Every result (see final_targets): a plain run rebuilds whatever is missing.
rule all:
    default_target: True
    input:
        final_targets,


rule all_models:
    input:
        model_targets(),


# Everything the language-model experiments fetch (models and datasets): run it on a node
# with internet before the rest.
rule all_downloads:
    input:
        download_targets(),


rule all_basis:
    input:
        basis_targets(),


rule all_clusters:
    input:
        cluster_targets(),
