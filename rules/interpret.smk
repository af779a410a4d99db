# Stage 8: per-feature evidence (features.zarr) and the interactive explorer page.


rule interpret_features:
    input:
        weights=model_input,
        tokens=tokens_input,
        basis="results/{experiment}/{method}/basis.zarr",
        code=stage_code("interpret_features"),
    output:
        features=directory("results/{experiment}/{method}/features.zarr"),
    log:
        "results/logs/interpret_features/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/interpret_features/{experiment}/{method}.tsv"
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
        interpret=interpret_params,
    script:
        "../scripts/interpret_features.py"


rule build_explorer:
    input:
        basis=per_method("results/{experiment}/{method}/basis.zarr"),
        edges=per_method("results/{experiment}/{method}/edges.zarr"),
        modules=per_method("results/{experiment}/{method}/modules.json"),
        features=per_method("results/{experiment}/{method}/features.zarr"),
        summary="results/{experiment}/summary.json",
        evaluation=evaluation_input,
        heads=heads_input,
        code=stage_code("build_explorer"),
    output:
        explorer=report(
            "results/{experiment}/explorer.html",
            caption="../report/explorer.rst",
            category="{experiment}",
            subcategory="explorer",
        ),
    log:
        "results/logs/build_explorer/{experiment}.log",
    benchmark:
        "results/benchmarks/build_explorer/{experiment}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(30),
    params:
        model=model_params,
        interpret=interpret_params,
        methods=methods,
    script:
        "../scripts/build_explorer.py"


# Head roles (previous-token, induction) from attention patterns, and the heads that write each
# residual-stream feature. GPT-2 only: run for the toy LMs trained here (see final_targets).
rule attribute_heads:
    input:
        model="resources/models/{experiment}",
        tokens="results/{experiment}/tokens.zarr",
        basis=per_method("results/{experiment}/{method}/basis.zarr"),
        code=stage_code("attribute_heads"),
    output:
        json="results/{experiment}/heads.json",
        md="results/{experiment}/heads.md",
    log:
        "results/logs/attribute_heads/{experiment}.log",
    benchmark:
        "results/benchmarks/attribute_heads/{experiment}.tsv"
    wildcard_constraints:
        experiment=HUB,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        methods=methods,
    script:
        "../scripts/attribute_heads.py"
