# Data foundation: assets, demo world, dataset indexes, demo classifier, score import.
# Included by the top-level Snakefile (after `config` is loaded and validated).
# Its input functions live in common.smk (section "data").

# Only planned when something needs them: a run whose `pretrained` folder has its own tokenizer/
# (and no demo) indexes with that and downloads nothing.
rule assets:
    output:
        tokenizer=DATA_TOKENIZER,
    params:
        out=lambda wc, output: str(Path(output.tokenizer).parent.parent),
        parts=["tokenizer"],
    conda:
        "../../environment.yml"
    log:
        "logs/data/assets.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    script:
        "../scripts/assets.py"


rule assets_synsets:
    output:
        synsets=DATA_SYNSETS,
    params:
        out=lambda wc, output: str(Path(output.synsets).parent),
        parts=["synsets"],
    conda:
        "../../environment.yml"
    log:
        "logs/data/assets_synsets.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    script:
        "../scripts/assets.py"


if config["demo"]["enabled"]:

    rule demo_world:
        input:
            synsets=DEMO_SYNSETS,
        output:
            markers=list(data_demo_markers().values()),
            corpus=f"{config['demo']['root']}/corpus/captions.csv",
        params:
            # only what the generator reads, so unrelated config changes do not regenerate the data
            config={
                "seed": config["seed"],
                "demo": {
                    **{k: v for k, v in config["demo"].items() if k != "tiny_model"},
                    "tiny_model": {"resolution": config["demo"]["tiny_model"]["resolution"]},
                },
                "datasets": {n: {"layout": d["layout"], "root": d["root"]} for n, d in DATASETS.items()},
            },
        conda:
            "../../environment.yml"
        log:
            "logs/data/demo_world.log",
        benchmark:
            "logs/data/demo_world.bench.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        script:
            "../scripts/demo_world.py"

    rule classifier:
        input:
            train="results/{dataset}/index/train.parquet",
            test="results/{dataset}/index/test.parquet",
            classes="results/{dataset}/index/classes.parquet",
        output:
            f"{config['demo']['root']}/classifications/{{dataset}}_democls.json",
        params:
            dataset=lambda w: dataset_view(w.dataset),
            epochs=config["demo"]["classifier_epochs"],
            seed=config["seed"],
        conda:
            "../../environment.yml"
        log:
            "logs/data/classifier_{dataset}.log",
        benchmark:
            "logs/data/classifier_{dataset}.bench.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        script:
            "../scripts/classifier.py"


checkpoint index:
    input:
        unpack(data_index_inputs),
    output:
        train="results/{dataset}/index/train.parquet",
        test="results/{dataset}/index/test.parquet",
        classes="results/{dataset}/index/classes.parquet",
    params:
        dataset=lambda w: dataset_view(w.dataset, drop=EVAL_ONLY_DATASET_KEYS + ("classifier",)),
        verify="test",
    conda:
        "../../environment.yml"
    log:
        "logs/data/index_{dataset}.log",
    benchmark:
        "logs/data/index_{dataset}.bench.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    script:
        "../scripts/index.py"


rule import_scores:
    input:
        scores=data_scores_source,
        test="results/{dataset}/index/test.parquet",
        classes="results/{dataset}/index/classes.parquet",
    output:
        "results/{dataset}/scores/{classifier}.parquet",
    params:
        format=lambda w: config["datasets"][w.dataset]["classifier"].get("format", "json"),
    conda:
        "../../environment.yml"
    log:
        "logs/data/import_scores_{dataset}_{classifier}.log",
    benchmark:
        "logs/data/import_scores_{dataset}_{classifier}.bench.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/import_scores.py"
