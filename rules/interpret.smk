# Stage 8: per-feature evidence of each basis on held-out data (features.zarr).


rule interpret_features:
    input:
        weights=model_input,
        tokens=tokens_input,
        basis="results/{experiment}/{method}/basis.zarr",
        code=stage_code("interpret_features"),
    output:
        features=directory("results/{experiment}/{method}/features.zarr"),
    log:
        "results/logs/interpret_features/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/interpret_features/{experiment}/{method}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=gpus,
        mem_mb=model_mem_mb("interpret_features"),
        runtime=model_runtime("interpret_features"),
    params:
        model=model_params,
        extract=extract_params,
        interpret=features_params,
    script:
        "../scripts/interpret_features.py"
