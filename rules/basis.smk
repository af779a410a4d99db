# Stage 3: per-layer bases for each method, backwards from the output; sharded experiments sum
# the shards' M′ and solve each layer as one small job.


rule fit_basis:
    input:
        weights=model_input,
        acts="results/{experiment}/activations.zarr",
        tokens=recompute_tokens,
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
        gpu=gpus,
        mem_mb=model_mem_mb("fit_basis"),
        runtime=model_runtime("fit_basis"),
    params:
        model=model_params,
        extract=extract_params,
        basis=basis_params,
    script:
        "../scripts/fit_basis.py"


rule shard_m_dash:
    input:
        weights=model_input,
        acts="results/{experiment}/shards/{shard}/activations.zarr",
        tokens=recompute_tokens,
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
        gpu=gpus,
        mem_mb=model_mem_mb("shard_m_dash"),
        runtime=model_runtime("shard_m_dash"),
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
