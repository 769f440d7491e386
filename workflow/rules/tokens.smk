# Stage 1: concept tokens (docs/method.md § Stage 1). One job per contiguous shard of the kept classes
# (min(train_token.shards, kept classes) jobs, known once the index checkpoint exists), then a merge.
# With train_token.load_token_path set, nothing is trained: merge_tokens converts / validates that file or
# original tokens/ folder instead. A killed train_token job resumes from <shard>.partial/ next to its output
# (not an output, so Snakemake keeps it).
TRAIN_TOKEN = config["train_token"]
# Input function (genpromp.plan): the shard count follows the class table of the index (a checkpoint).
token_shards = lambda wc: plan.token_shards(
    config, wc.dataset, checkpoints.index.get(dataset=wc.dataset).output.classes
)


if not TRAIN_TOKEN["load_token_path"]:

    rule train_token:
        input:
            train=layout.index_table("{dataset}", "train"),
            classes=layout.index_table("{dataset}", "classes"),
            model=PRETRAINED_MARKER,
        output:
            tokens=layout.token_shard("{dataset}", "{shard}"),
            log_csv=layout.token_shard_log("{dataset}", "{shard}"),
        log:
            "logs/tokens/{dataset}/shard-{shard}.log",
        benchmark:
            "logs/tokens/{dataset}/shard-{shard}.bench.tsv"
        conda:
            "../../environment.yml"
        threads: job_threads("train_token", config)
        resources:
            mem_mb=measured("train_token", "mem_mb"),
            runtime=measured("train_token", "runtime"),
            gpu=max(config["compute"]["gpus"], 0),
            # all of a multi-GPU job's processes on one node (accelerate launch starts them there)
            nodes=1,
            gpu_mem_mb=measured("train_token", "gpu_mem_mb"),
        params:
            config=lambda wc: stage_view(config, wc.dataset, "train_token"),
        script:
            "../scripts/train_token.py"


rule merge_tokens:
    input:
        shards=[] if TRAIN_TOKEN["load_token_path"] else token_shards,
        classes=layout.index_table("{dataset}", "classes"),
    output:
        layout.tokens("{dataset}"),
    log:
        "logs/tokens/{dataset}/merge.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        load_token_path=TRAIN_TOKEN["load_token_path"],
    script:
        "../scripts/merge_tokens.py"
