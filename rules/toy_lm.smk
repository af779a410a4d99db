# Stage 0: toy language models with a known circuit, trained here and saved like hub models.


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
