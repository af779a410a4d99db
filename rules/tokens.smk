# Stage 1b (language models): token chunks of the text dataset, for fitting, statistics and
# evaluation.


rule tokenize_dataset:
    input:
        model_dir="resources/models/{experiment}",
        dataset="resources/datasets/{experiment}",
        code=stage_code("tokenize_dataset"),
    output:
        out=directory("results/{experiment}/tokens.zarr"),
    log:
        "results/logs/tokenize_dataset/{experiment}.log",
    wildcard_constraints:
        experiment=HUB,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
    params:
        model=model_params,
    script:
        "../scripts/tokenize_dataset.py"
