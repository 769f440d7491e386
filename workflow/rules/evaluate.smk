# Evaluation: score each CAM cache (both protocols) and the map-free baselines.
#
# Needs from common.smk: nothing but `config`. Outputs used by the lead's target list:
#   results/{dataset}/{run}/eval/{variant}/per_image.parquet, .../summary.json
#   results/{dataset}/baselines/{center,full}/summary.json
# The variant wildcard is genpromp.config.variant_name(mode, ratio, timesteps), e.g. top1_w0.60_t0-99;
# mode and w are parsed back from it. gtk variants need no classifier scores.
# One job per variant; shards are spread over `threads` worker processes (memory ~ one CAM shard each).


def _eval_scores(wildcards):
    ds = config["datasets"][wildcards.dataset]
    if wildcards.variant.startswith("gtk_") or not ds.get("classifier"):
        return []
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet"


def _baseline_scores(wildcards):
    ds = config["datasets"][wildcards.dataset]
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet" if ds.get("classifier") else []


rule evaluate:
    input:
        cams="results/{dataset}/{run}/cams/{variant}/index.parquet",
        index="results/{dataset}/index/test.parquet",
        classes="results/{dataset}/index/classes.parquet",
        scores=_eval_scores,
    output:
        per_image="results/{dataset}/{run}/eval/{variant}/per_image.parquet",
        summary="results/{dataset}/{run}/eval/{variant}/summary.json",
    params:
        evaluation=config["evaluation"],
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
    log:
        "logs/evaluate/{dataset}/{run}/{variant}.log",
    benchmark:
        "logs/evaluate/{dataset}/{run}/{variant}.bench.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/evaluate.py"


rule evaluate_baselines:
    input:
        index="results/{dataset}/index/test.parquet",
        scores=_baseline_scores,
    output:
        center="results/{dataset}/baselines/center/summary.json",
        full="results/{dataset}/baselines/full/summary.json",
    params:
        evaluation=config["evaluation"],
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
    log:
        "logs/evaluate/{dataset}/baselines.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/evaluate.py"
