# Stage 4: interaction edges between adjacent node layers.


rule compute_edges:
    input:
        weights=model_input,
        acts="results/{experiment}/activations.zarr",
        basis="results/{experiment}/{method}/basis.zarr",
        code=stage_code("compute_edges"),
    output:
        edges_out=directory("results/{experiment}/{method}/edges.zarr"),
    log:
        "results/logs/compute_edges/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/compute_edges/{experiment}/{method}.tsv"
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
        edges=edges_params,
    script:
        "../scripts/compute_edges.py"
