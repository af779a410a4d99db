# Stage 6: the LIB-vs-PCA summary of each experiment.


rule summarize_experiment:
    input:
        metrics=metrics_input,
        basis=per_method("results/{experiment}/{method}/basis.zarr"),
        edges=per_method("results/{experiment}/{method}/edges.zarr"),
        modules=per_method("results/{experiment}/{method}/modules.json"),
        ground_truth=ground_truth_input,
        code=stage_code("summarize_experiment"),
    output:
        md="results/{experiment}/summary.md",
        json="results/{experiment}/summary.json",
        spectra=report(
            "results/{experiment}/spectra.png",
            caption="../report/spectra.rst",
            category="{experiment}",
            subcategory="spectra",
        ),
        graph=report(
            "results/{experiment}/graph.png",
            caption="../report/graph.rst",
            category="{experiment}",
            subcategory="interaction graph",
        ),
    log:
        "results/logs/summarize_experiment/{experiment}.log",
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(30),
    params:
        methods=methods,
    script:
        "../scripts/summarize_experiment.py"
