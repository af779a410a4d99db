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


# Downloads stream files to disk, so their memory does not grow with the model. Snakemake does
# not retry them (retries: 0 overrides a profile's): hub.py retries only what can pass
# (timeouts, HTTP 429/5xx) and fails at once on a failed name lookup or offline.
rule download_model:
    input:
        toy_lm_output("hub"),
    output:
        out=directory("resources/models/{experiment}"),
    log:
        "results/logs/download_model/{experiment}.log",
    wildcard_constraints:
        experiment=HUB,
    retries: 0
    localrule: True
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(60),
    params:
        model=model_section("hub"),
    script:
        "../scripts/download_model.py"


rule download_dataset:
    input:
        toy_lm_output("text"),
    output:
        out=directory("resources/datasets/{experiment}"),
    log:
        "results/logs/download_dataset/{experiment}.log",
    wildcard_constraints:
        experiment=HUB,
    retries: 0
    localrule: True
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(120),
    params:
        model=model_section("text"),
    script:
        "../scripts/download_dataset.py"


# A toy language model with a known circuit (induction), trained here and saved like a hub
# model: experiments read it through download_model/download_dataset as a local source. Its
# own params, so that no experiment setting retrains it. One thread: the tiny model's steps
# are dominated by per-operation overhead, and a second thread made them several times slower.
rule train_toy_lm:
    input:
        code=stage_code("train_toy_lm"),
    output:
        model=directory("results/toy_lms/{toy_lm}/model"),
        corpus="results/toy_lms/{toy_lm}/corpus.txt",
        metrics="results/toy_lms/{toy_lm}/metrics.json",
    log:
        "results/logs/train_toy_lm/{toy_lm}.log",
    benchmark:
        "results/benchmarks/train_toy_lm/{toy_lm}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: 1  # one thread: the slow test (test_toy_lm.py) trains the same model
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(30),
    params:
        settings=toy_lm_params,
    script:
        "../scripts/train_toy_lm.py"
