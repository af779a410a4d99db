# Stage 8 (page): the interactive explorer page of an experiment (explorer.html).


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
        interpret=explorer_params,
        methods=methods,
    script:
        "../scripts/build_explorer.py"
