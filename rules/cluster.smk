# Stage 5: Leiden modules of the interaction graph, with ε from the edge mass (cluster_graph) or
# from the edge ablation at each evaluated resolution (cluster_resolutions).


rule cluster_graph:
    input:
        weights=model_input,
        basis="results/{experiment}/{method}/basis.zarr",
        edges="results/{experiment}/{method}/edges.zarr",
        code=stage_code("cluster_graph"),
    output:
        modules="results/{experiment}/{method}/modules.json",
        graph="results/{experiment}/{method}/graph.graphml",
    log:
        "results/logs/cluster_graph/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/cluster_graph/{experiment}/{method}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=lm_mem_mb(job_sizes.cluster_memory_bytes),
        runtime=cluster_runtime(sweep=False),
    params:
        model=model_params,
        extract=extract_params,
        cluster=cluster_params,
    script:
        "../scripts/cluster_graph.py"


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
    benchmark:
        "results/benchmarks/cluster_resolutions/{experiment}/{method}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=lm_mem_mb(job_sizes.cluster_memory_bytes),
        runtime=cluster_runtime(sweep=True),
    params:
        model=model_params,
        extract=extract_params,
        cluster=cluster_sweep_params,
        evaluate=evaluate_params(ResolutionsConfig),
    script:
        "../scripts/cluster_resolutions.py"
