# Stage 1 (language models): a hub model and a text dataset into resources/, the only rules
# that use the network.


# Downloads stream files to disk, so their memory does not grow with the model. Snakemake does
# not retry them (retries: 0 overrides a profile's): hub.py retries only what can pass
# (timeouts, HTTP 429/5xx) and fails at once on a failed name lookup or offline.
rule download_model:
    input:
        toy_lm_output("hub"),
    output:
        out=directory("resources/models/{experiment}"),
    log:
        "results/logs/download_model/{experiment}.log",
    wildcard_constraints:
        experiment=HUB,
    retries: 0
    localrule: True
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(60),
    params:
        model=model_section("hub"),
    script:
        "../scripts/download_model.py"


rule download_dataset:
    input:
        toy_lm_output("text"),
    output:
        out=directory("resources/datasets/{experiment}"),
    log:
        "results/logs/download_dataset/{experiment}.log",
    wildcard_constraints:
        experiment=HUB,
    retries: 0
    localrule: True
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(120),
    params:
        model=model_section("text"),
    script:
        "../scripts/download_dataset.py"
