# Sharded stages (extract.n_shards > 1): scatter over contiguous shards of whole batches,
# gather by adding the shards' sums. Each layer's basis solve is one small job.


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
        gpu=GPUS,
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
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


rule shard_m_dash:
    input:
        weights=model_input,
        acts="results/{experiment}/shards/{shard}/activations.zarr",
        next_basis=next_layer_basis,
        code=stage_code("shard_m_dash"),
    output:
        m_dash=directory("results/{experiment}/lib/shards/{shard}/m_dash/{layer}.zarr"),
    log:
        "results/logs/shard_m_dash/{experiment}/{layer}/{shard}.log",
    benchmark:
        "results/benchmarks/shard_m_dash/{experiment}/{layer}/{shard}.tsv"
    wildcard_constraints:
        experiment=SHARDED,
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
        "../scripts/shard_m_dash.py"


rule fit_layer:
    input:
        stats="results/{experiment}/stats.zarr",
        m_dash=m_dash_parts,
        code=stage_code("fit_layer"),
    output:
        basis_out=directory("results/{experiment}/{method}/layers/{layer}.zarr"),
    log:
        "results/logs/fit_layer/{experiment}/{method}/{layer}.log",
    wildcard_constraints:
        experiment=SHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(15),
    params:
        model=model_params,
        extract=extract_params,
        basis=basis_params,
    script:
        "../scripts/fit_layer.py"


rule assemble_basis:
    input:
        layers=layer_bases,
        code=stage_code("assemble_basis"),
    output:
        basis_out=directory("results/{experiment}/{method}/basis.zarr"),
    log:
        "results/logs/assemble_basis/{experiment}/{method}.log",
    wildcard_constraints:
        experiment=SHARDED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(15),
    params:
        model=model_params,
        extract=extract_params,
        basis=basis_params,
    script:
        "../scripts/assemble_basis.py"


rule shard_edges:
    input:
        weights=model_input,
        acts="results/{experiment}/shards/{shard}/activations.zarr",
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
        gpu=GPUS,
        mem_mb=mem_mb(4000),
        runtime=runtime(120),
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
