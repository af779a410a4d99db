# Stage 7: ablations on held-out data, modules with ε from the edge ablation, report figures.


rule ablate_nodes:
    input:
        weights=model_input,
        tokens=tokens_input,
        basis="results/{experiment}/{method}/basis.zarr",
        code=stage_code("ablate_nodes"),
    output:
        node_ablation="results/{experiment}/{method}/node_ablation.json",
    log:
        "results/logs/ablate_nodes/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/ablate_nodes/{experiment}/{method}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPUS,
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
    params:
        model=model_params,
        evaluate=evaluate_params(NodeAblationConfig),
    script:
        "../scripts/ablate_nodes.py"


rule ablate_edges:
    input:
        weights=model_input,
        tokens=tokens_input,
        basis="results/{experiment}/{method}/basis.zarr",
        edges="results/{experiment}/{method}/edges.zarr",
        code=stage_code("ablate_edges"),
    output:
        edge_ablation="results/{experiment}/{method}/edge_ablation.json",
    log:
        "results/logs/ablate_edges/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/ablate_edges/{experiment}/{method}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPUS,
        mem_mb=mem_mb(6000),
        runtime=runtime(120),
    params:
        model=model_params,
        evaluate=evaluate_params(EdgeAblationConfig),
    script:
        "../scripts/ablate_edges.py"


rule cluster_resolutions:
    input:
        weights=model_input,
        basis="results/{experiment}/{method}/basis.zarr",
        edges="results/{experiment}/{method}/edges.zarr",
        ablation="results/{experiment}/{method}/edge_ablation.json",
        code=stage_code("cluster_resolutions"),
    output:
        modules_by_resolution="results/{experiment}/{method}/modules_by_resolution.json",
    log:
        "results/logs/cluster_resolutions/{experiment}/{method}.log",
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(30),
    params:
        model=model_params,
        extract=extract_params,
        cluster=cluster_sweep_params,
        evaluate=evaluate_params(ResolutionsConfig),
    script:
        "../scripts/cluster_resolutions.py"
