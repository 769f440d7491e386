# Data foundation: tokenizer / synset assets, dataset indexes (a checkpoint: the number of CAM shards and
# stage-1 shards follows them) and the classifier-score import. The demo world that generates the demo
# datasets is in demo.smk.
from genpromp.demo.world import demo_markers

ASSETS = "resources/assets"
ASSETS_TOKENIZER = f"{ASSETS}/clip_tokenizer/vocab.json"
ASSETS_SYNSETS = f"{ASSETS}/LOC_synset_mapping.txt"
PRETRAINED_TOKENIZER = f"{config['pretrained']}/tokenizer"


def _has_tokenizer(folder):
    return all((Path(folder) / name).is_file() for name in ("vocab.json", "merges.txt"))


# The CLIP tokenizer the index picks meta tokens with: a real SD folder's own tokenizer/ (no wheel download,
# so an offline node can index), else the one rule `assets` builds (the demo model is built from that one,
# so demo runs always use it).
INDEX_TOKENIZER = (f"{PRETRAINED_TOKENIZER}/vocab.json"
                   if not config["demo"]["enabled"] and _has_tokenizer(PRETRAINED_TOKENIZER) else ASSETS_TOKENIZER)


def index_inputs(wildcards):
    """The tokenizer, and the marker file of a demo-generated dataset (so the index waits for the world)."""
    inputs = {"tokenizer": INDEX_TOKENIZER}
    marker = demo_markers(config).get(wildcards.dataset)
    if marker:
        inputs["marker"] = marker
    return inputs


def scores_source(wildcards):
    """The classifier's score file named in the config (JSON or CSV)."""
    classifier = DATASETS[wildcards.dataset].get("classifier")
    if not classifier or classifier["name"] != wildcards.classifier:
        raise WorkflowError(f"dataset {wildcards.dataset} has no classifier named {wildcards.classifier}")
    return classifier["path"]


# Only planned when something needs them: a run whose `pretrained` folder has its own tokenizer/ (and no
# demo) indexes with that and downloads nothing.
rule assets:
    output:
        tokenizer=ASSETS_TOKENIZER,
    params:
        out=lambda wc, output: str(Path(output.tokenizer).parent.parent),
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
        synsets=ASSETS_SYNSETS,
    params:
        out=lambda wc, output: str(Path(output.synsets).parent),
    conda:
        "../../environment.yml"
    log:
        "logs/data/assets_synsets.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    script:
        "../scripts/assets_synsets.py"


checkpoint index:
    input:
        unpack(index_inputs),
    output:
        train=layout.index_table("{dataset}", "train"),
        test=layout.index_table("{dataset}", "test"),
        classes=layout.index_table("{dataset}", "classes"),
    params:
        dataset=lambda w: dataset_view(config, w.dataset, drop=EVAL_ONLY_DATASET_KEYS + ("classifier",)),
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
        scores=scores_source,
        test=layout.index_table("{dataset}", "test"),
        classes=layout.index_table("{dataset}", "classes"),
    output:
        layout.scores("{dataset}", "{classifier}"),
    params:
        format=lambda w: DATASETS[w.dataset]["classifier"].get("format", "json"),
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
