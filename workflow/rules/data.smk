# Data foundation: tokenizer / synset assets, dataset indexes (a checkpoint: the number of CAM shards and
# stage-1 shards follows them) and the classifier-score import. The demo world that generates the demo
# datasets is in demo.smk.
from genpromp.demo.world import demo_markers

ASSETS_TOKENIZER = plan.ASSETS_TOKENIZER
ASSETS_SYNSETS = plan.ASSETS_SYNSETS
# Input functions (genpromp.plan). The index waits for a demo-generated dataset's marker file.
index_inputs = lambda wc: {"tokenizer": plan.index_tokenizer(config)} | (
    {"marker": demo_markers(config)[wc.dataset]} if wc.dataset in demo_markers(config) else {}
)
scores_source = lambda wc: plan.scores_source(config, wc.dataset, wc.classifier)


# Only planned when something needs them: a run whose `pretrained` folder has its own tokenizer/ (and no
# demo) indexes with that and downloads nothing.
rule assets:
    output:
        tokenizer=ASSETS_TOKENIZER,
    log:
        "logs/data/assets.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(15),
    params:
        out=lambda wc, output: str(Path(output.tokenizer).parent.parent),
    script:
        "../scripts/assets.py"


rule assets_synsets:
    output:
        synsets=ASSETS_SYNSETS,
    log:
        "logs/data/assets_synsets.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(15),
    params:
        out=lambda wc, output: str(Path(output.synsets).parent),
    script:
        "../scripts/assets_synsets.py"


checkpoint index:
    input:
        unpack(index_inputs),
    output:
        train=layout.index_table("{dataset}", "train"),
        test=layout.index_table("{dataset}", "test"),
        classes=layout.index_table("{dataset}", "classes"),
    log:
        "logs/data/index_{dataset}.log",
    benchmark:
        "logs/data/index_{dataset}.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(120),
    params:
        dataset=lambda w: dataset_view(config, w.dataset, drop=EVAL_ONLY_DATASET_KEYS + ("classifier",)),
        verify="test",
    script:
        "../scripts/index.py"


rule import_scores:
    input:
        scores=scores_source,
        test=layout.index_table("{dataset}", "test"),
        classes=layout.index_table("{dataset}", "classes"),
    output:
        layout.scores("{dataset}", "{classifier}"),
    log:
        "logs/data/import_scores_{dataset}_{classifier}.log",
    benchmark:
        "logs/data/import_scores_{dataset}_{classifier}.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
    params:
        format=lambda w: DATASETS[w.dataset]["classifier"].get("format", "json"),
    script:
        "../scripts/import_scores.py"
