# Stage 7 (report): evaluation.json and the report figures.


rule make_report_figures:
    input:
        nodes=per_method("results/{experiment}/{method}/node_ablation.json"),
        edge_ablation=per_method("results/{experiment}/{method}/edge_ablation.json"),
        modules=per_method("results/{experiment}/{method}/modules_by_resolution.json"),
        edges=per_method("results/{experiment}/{method}/edges.zarr"),
        code=stage_code("make_report_figures"),
    output:
        json="results/{experiment}/evaluation.json",
        nodes_png=report(
            "results/{experiment}/node_ablation.png",
            caption="../report/node_ablation.rst",
            category="{experiment}",
            subcategory="node ablation",
        ),
        edges_png=report(
            "results/{experiment}/edge_ablation.png",
            caption="../report/edge_ablation.rst",
            category="{experiment}",
            subcategory="edge ablation",
        ),
        distribution=report(
            "results/{experiment}/edge_distribution.png",
            caption="../report/edge_distribution.rst",
            category="{experiment}",
            subcategory="edge weights",
        ),
        modules_png=report(
            "results/{experiment}/modules.png",
            caption="../report/modules.rst",
            category="{experiment}",
            subcategory="interaction graph",
        ),
    log:
        "results/logs/make_report_figures/{experiment}.log",
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(30),
    params:
        methods=methods,
    script:
        "../scripts/make_report_figures.py"
