# Stage 1: the model, trained from the config or imported from an existing weights.npz.


rule train_model:
    input:
        code=stage_code("train_model"),
    output:
        weights="results/{experiment}/model/weights.npz",
        metrics="results/{experiment}/model/metrics.json",
        curve=report(
            "results/{experiment}/model/training.png",
            caption="../report/training.rst",
            category="{experiment}",
            subcategory="training",
        ),
    log:
        "results/logs/train_model/{experiment}.log",
    benchmark:
        "results/benchmarks/train_model/{experiment}.tsv"
    wildcard_constraints:
        experiment=TRAINED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPUS,
        mem_mb=mem_mb(2000),
        runtime=runtime(60),
    params:
        model=model_params,
    script:
        "../scripts/train_model.py"


rule import_model:
    input:
        weights_in=imported_weights,
        code=stage_code("import_model"),
    output:
        weights="results/{experiment}/model/weights.npz",
        metrics="results/{experiment}/model/metrics.json",
        curve="results/{experiment}/model/training.png",
    log:
        "results/logs/import_model/{experiment}.log",
    wildcard_constraints:
        experiment=IMPORTED,
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        model=model_params,
    script:
        "../scripts/import_model.py"
