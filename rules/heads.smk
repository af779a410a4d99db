# Stage 8 (toy LMs): head roles (previous-token, induction) from attention patterns, and the
# heads that write each residual-stream feature.


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
