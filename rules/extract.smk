# Stage 2: activations at every node layer, with their means and centred Grams.


rule extract_activations:
    input:
        weights="results/{experiment}/model/weights.npz",
        code=code_files("model", "extract"),
    output:
        acts=directory("results/{experiment}/activations.zarr"),
    log:
        "results/logs/extract_activations/{experiment}.log",
    benchmark:
        "results/benchmarks/extract_activations/{experiment}.tsv"
    conda:
        "../envs/interaction_basis.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    params:
        model=model_params,
        extract=extract_params,
    script:
        "../scripts/extract_activations.py"
