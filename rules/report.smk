# Stage 6: the LIB-vs-PCA summary of each experiment.


rule summarize_experiment:
    input:
        metrics="results/{experiment}/model/metrics.json",
        basis=per_method("results/{experiment}/{method}/basis.zarr"),
        edges=per_method("results/{experiment}/{method}/edges.zarr"),
        modules=per_method("results/{experiment}/{method}/modules.json"),
        code=code_files("report"),
    output:
        md="results/{experiment}/summary.md",
        json="results/{experiment}/summary.json",
        spectra="results/{experiment}/spectra.png",
        graph="results/{experiment}/graph.png",
    log:
        "results/logs/summarize_experiment/{experiment}.log",
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
    params:
        methods=methods,
    script:
        "../scripts/summarize_experiment.py"
