# Stage 3: per-layer bases for each method, backwards from the output.


rule fit_basis:
    input:
        weights=model_input,
        acts="results/{experiment}/activations.zarr",
        code=stage_code("fit_basis"),
    output:
        basis_out=directory("results/{experiment}/{method}/basis.zarr"),
    log:
        "results/logs/fit_basis/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/fit_basis/{experiment}/{method}.tsv"
    wildcard_constraints:
        experiment=UNSHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPUS,
        mem_mb=mem_mb(4000),
        runtime=runtime(120),
    params:
        model=model_params,
        extract=extract_params,
        basis=basis_params,
    script:
        "../scripts/fit_basis.py"
