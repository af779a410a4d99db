# Stage 4: interaction edges between adjacent node layers, whole or per shard (then gathered by
# adding the shards' sums).


rule compute_edges:
    input:
        weights=model_input,
        acts="results/{experiment}/activations.zarr",
        tokens=recompute_tokens,
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
        gpu=gpus,
        mem_mb=model_mem_mb("compute_edges"),
        runtime=model_runtime("compute_edges"),
    params:
        model=model_params,
        extract=extract_params,
        edges=edges_params,
    script:
        "../scripts/compute_edges.py"


rule shard_edges:
    input:
        weights=model_input,
        acts="results/{experiment}/shards/{shard}/activations.zarr",
        tokens=recompute_tokens,
        basis="results/{experiment}/{method}/basis.zarr",
        code=stage_code("shard_edges"),
    output:
        parts=directory("results/{experiment}/{method}/shards/{shard}/edges.zarr"),
    log:
        "results/logs/shard_edges/{experiment}/{method}/{shard}.log",
    benchmark:
        "results/benchmarks/shard_edges/{experiment}/{method}/{shard}.tsv"
    wildcard_constraints:
        experiment=SHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=gpus,
        mem_mb=model_mem_mb("shard_edges"),
        runtime=model_runtime("shard_edges"),
    params:
        model=model_params,
        extract=extract_params,
        edges=edges_params,
    script:
        "../scripts/shard_edges.py"


rule gather_edges:
    input:
        basis="results/{experiment}/{method}/basis.zarr",
        parts=shard_paths("results/{experiment}/{method}/shards/{shard}/edges.zarr"),
        code=stage_code("gather_edges"),
    output:
        edges_out=directory("results/{experiment}/{method}/edges.zarr"),
    log:
        "results/logs/gather_edges/{experiment}/{method}.log",
    wildcard_constraints:
        experiment=SHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(15),
    params:
        edges=edges_params,
    script:
        "../scripts/gather_edges.py"
