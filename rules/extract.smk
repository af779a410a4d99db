# Stage 2: activations at every node layer, with their means and centred Grams.


rule extract_activations:
    input:
        weights=model_input,
        tokens=tokens_input,
        code=stage_code("extract_activations"),
    output:
        acts=directory("results/{experiment}/activations.zarr"),
    log:
        "results/logs/extract_activations/{experiment}.log",
    benchmark:
        "results/benchmarks/extract_activations/{experiment}.tsv"
    wildcard_constraints:
        experiment=UNSHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPUS,
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
    params:
        model=model_params,
        extract=extract_params,
    script:
        "../scripts/extract_activations.py"


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
