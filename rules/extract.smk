# Stage 2: activations at every node layer, with their means and centred Grams; sharded
# experiments (extract.n_shards > 1) extract per shard and gather by adding the shards' sums.


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
        gpu=gpus,
        mem_mb=model_mem_mb("extract_activations"),
        runtime=model_runtime("extract_activations"),
    params:
        model=model_params,
        extract=extract_params,
    script:
        "../scripts/extract_activations.py"


rule extract_shard:
    input:
        weights=model_input,
        tokens=tokens_input,
        code=stage_code("extract_shard"),
    output:
        acts=directory("results/{experiment}/shards/{shard}/activations.zarr"),
    log:
        "results/logs/extract_shard/{experiment}/{shard}.log",
    benchmark:
        "results/benchmarks/extract_shard/{experiment}/{shard}.tsv"
    wildcard_constraints:
        experiment=SHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=gpus,
        mem_mb=model_mem_mb("extract_shard"),
        runtime=model_runtime("extract_shard"),
    params:
        model=model_params,
        extract=extract_params,
    script:
        "../scripts/extract_shard.py"


checkpoint gather_stats:
    input:
        shards=shard_paths("results/{experiment}/shards/{shard}/activations.zarr"),
        code=stage_code("gather_stats"),
    output:
        stats=directory("results/{experiment}/stats.zarr"),
    log:
        "results/logs/gather_stats/{experiment}.log",
    wildcard_constraints:
        experiment=SHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(15),
    script:
        "../scripts/gather_stats.py"
