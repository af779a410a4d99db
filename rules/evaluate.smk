# Stage 7: node and edge ablations on held-out data.


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
        gpu=gpus,
        mem_mb=model_mem_mb("ablate_nodes"),
        runtime=model_runtime("ablate_nodes"),
    params:
        model=model_params,
        evaluate=evaluate_params(NodeAblationConfig),
        device=device_params,
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
        gpu=gpus,
        # Peak: the model and evaluation set (as ablate_nodes) plus at most 512 MiB of reused
        # group outputs; stable since the job fixes glibc's mmap threshold (docs/performance.md).
        mem_mb=model_mem_mb("ablate_edges"),
        runtime=model_runtime("ablate_edges"),
    params:
        model=model_params,
        evaluate=evaluate_params(EdgeAblationConfig),
        device=device_params,
    script:
        "../scripts/ablate_edges.py"
