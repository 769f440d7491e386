# Stage 1: concept tokens (docs/method.md § Stage 1). One job per contiguous shard of the kept classes
# (min(train_token.shards, kept classes) jobs, known once the index checkpoint exists), then a merge.
# With train_token.load_token_path set, nothing is trained: merge_tokens converts/validates that
# file or original tokens/ folder instead. Killed train_token jobs resume from
# results/<dataset>/tokens/shard-<k>.partial/ (not an output, so Snakemake keeps it).

# TRAIN_TOKEN, GPUS, SD_SCALE and token_shards() live in common.smk (section "tokens").


if not TRAIN_TOKEN["load_token_path"]:

    rule train_token:
        input:
            train="results/{dataset}/index/train.parquet",
            classes="results/{dataset}/index/classes.parquet",
            model=PRETRAINED_MARKER,
        output:
            tokens="results/{dataset}/tokens/shard-{shard}.safetensors",
            log_csv="results/{dataset}/tokens/shard-{shard}.log.csv",
        params:
            config=lambda wc: stage_config(wc.dataset, "train_token"),
        conda:
            "../../environment.yml"
        log:
            "logs/tokens/{dataset}/shard-{shard}.log",
        benchmark:
            "logs/tokens/{dataset}/shard-{shard}.bench.tsv"
        threads: 2
        resources:
            mem_mb=measured("train_token", "mem_mb"),
            runtime=measured("train_token", "runtime"),
            gpu=max(GPUS, 0),
            gpu_mem_mb=measured("train_token", "gpu_mem_mb"),
        script:
            "../scripts/train_token.py"


rule merge_tokens:
    input:
        shards=[] if TRAIN_TOKEN["load_token_path"] else token_shards,
        classes="results/{dataset}/index/classes.parquet",
    output:
        "results/{dataset}/tokens/tokens.safetensors",
    params:
        load_token_path=TRAIN_TOKEN["load_token_path"],
    conda:
        "../../environment.yml"
    log:
        "logs/tokens/{dataset}/merge.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/merge_tokens.py"
