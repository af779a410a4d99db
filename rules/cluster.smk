# Stage 5: Leiden modules of the interaction graph.


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
        mem_mb=mem_mb(2000),
        runtime=runtime(30),
    params:
        model=model_params,
        extract=extract_params,
        cluster=cluster_params,
    script:
        "../scripts/cluster_graph.py"
