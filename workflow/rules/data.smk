# Data foundation: assets, demo world, dataset indexes, demo classifier, score import.
# Included by the top-level Snakefile (after `config` is loaded and validated).

from pathlib import Path as _DataPath

from genpromp.data.synth import demo_dataset_targets as _demo_dataset_targets

DATA_ASSETS = "resources/assets"
DATA_TOKENIZER = f"{DATA_ASSETS}/clip_tokenizer/vocab.json"
DATA_SYNSETS = f"{DATA_ASSETS}/LOC_synset_mapping.txt"
DATA_MARKER = {"cub": "images.txt", "imagenet": "ILSVRC2012_list/val_folder_new.txt"}


def data_demo_markers():
    """Marker file of every demo-generated dataset: {dataset name: path}."""
    if not config["demo"]["enabled"]:
        return {}
    return {name: f"{root}/{DATA_MARKER[layout]}"
            for name, (layout, root) in _demo_dataset_targets(config).items()}


def data_index_inputs(wildcards):
    inputs = {"tokenizer": DATA_TOKENIZER}
    marker = data_demo_markers().get(wildcards.dataset)
    if marker:
        inputs["marker"] = marker
    return inputs


def data_scores_source(wildcards):
    classifier = config["datasets"][wildcards.dataset].get("classifier")
    if not classifier or classifier["name"] != wildcards.classifier:
        raise ValueError(f"dataset {wildcards.dataset} has no classifier named {wildcards.classifier}")
    return classifier["path"]


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    classifier="[A-Za-z0-9_.-]+",


rule assets:
    output:
        tokenizer=DATA_TOKENIZER,
        synsets=DATA_SYNSETS,
    params:
        out=DATA_ASSETS,
        wheels=f"{DATA_ASSETS}/wheels",
    log:
        "logs/data/assets.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    script:
        "../scripts/assets.py"


if config["demo"]["enabled"]:

    rule demo_world:
        input:
            synsets=DATA_SYNSETS,
        output:
            markers=list(data_demo_markers().values()),
            corpus=f"{config['demo']['root']}/corpus/captions.csv",
        params:
            config=config,
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
            dataset=lambda w: config["datasets"][w.dataset],
            epochs=config["demo"]["classifier_epochs"],
            seed=config["seed"],
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
        dataset=lambda w: config["datasets"][w.dataset],
        verify="test",
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
