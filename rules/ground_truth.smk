# Ground truth: the planted-module MLP's scores against its planted blocks (method §H).


rule score_ground_truth:
    input:
        weights="results/{experiment}/model/weights.npz",
        basis=per_method("results/{experiment}/{method}/basis.zarr"),
        edges=per_method("results/{experiment}/{method}/edges.zarr"),
        modules=per_method("results/{experiment}/{method}/modules.json"),
        code=stage_code("score_ground_truth"),
    output:
        json="results/{experiment}/ground_truth.json",
    log:
        "results/logs/score_ground_truth/{experiment}.log",
    wildcard_constraints:
        experiment=PLANTED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        model=model_params,
        methods=methods,
    script:
        "../scripts/score_ground_truth.py"
