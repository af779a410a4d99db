# Stage 8 (page): the interactive explorer page of an experiment: the folder explorer/ (the
# page, index.html, and the card files it loads on demand; the report carries the folder) and
# explorer.html, which opens it.


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
            directory("results/{experiment}/explorer"),
            htmlindex="index.html",
            caption="../report/explorer.rst",
            category="{experiment}",
            subcategory="explorer",
        ),
        link="results/{experiment}/explorer.html",
    log:
        "results/logs/build_explorer/{experiment}.log",
    benchmark:
        "results/benchmarks/build_explorer/{experiment}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=lm_mem_mb(job_sizes.explorer_memory_bytes),
        runtime=runtime(30),
    params:
        model=model_params,
        interpret=explorer_params,
        methods=methods,
    script:
        "../scripts/build_explorer.py"
