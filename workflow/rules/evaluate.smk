# Evaluation: score each CAM cache (both protocols) in parts, merge, and score the map-free baselines.
#
# Needs from common.smk: `config` and the data stage's `checkpoint index` (results/{dataset}/index/test.parquet).
# Outputs used by the lead's target list:
#   results/{dataset}/{run}/eval/{variant}/per_image.parquet, .../summary.json   (rule merge_eval)
#   results/{dataset}/baselines/{center,full}/summary.json                       (rule evaluate_baselines)
# With datasets.<d>.masks set, the parts and the baselines also count PxAP (the merged summary's "pxap").
# Parts (rule evaluate_shard): results/{dataset}/{run}/eval/{variant}/parts/part-{part}.{parquet,json}; part p
# holds whole CAM shards, evaluation.shard_size images rounded to whole CAM shards (test.shard_size each);
# their number follows the test set size (read after the index checkpoint). The variant wildcard is
# genpromp.config.variant_name(mode, ratio, timesteps), e.g. top1_w0.60_t0-99; gtk variants need no scores.
# Its input functions live in common.smk (section "evaluate").

rule evaluate_shard:
    input:
        cams="results/{dataset}/{run}/cams/{variant}/index.parquet",
        shards=_part_cam_files,
        index="results/{dataset}/index/test.parquet",
        scores=_eval_scores,
        masks=_eval_masks,
    output:
        per_image="results/{dataset}/{run}/eval/{variant}/parts/part-{part}.parquet",
        state="results/{dataset}/{run}/eval/{variant}/parts/part-{part}.json",
    params:
        evaluation=EVAL_SECTION,
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        shards=_part_cam_shards,
        masks=_eval_masks_param,
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate/{dataset}/{run}/{variant}/part-{part}.log",
    benchmark:
        "logs/evaluate/{dataset}/{run}/{variant}/part-{part}.bench.tsv"
    threads: 2
    resources:
        mem_mb=3000,
        # ~10 ms of CPU per image and protocol sweep (benchmarks/bench_eval_sweep.py), with a wide margin
        runtime=lambda wc, threads: 10 + config["evaluation"]["shard_size"] // (100 * threads),
    script:
        "../scripts/evaluate.py"


rule merge_eval:
    input:
        parts=_eval_part_files("parquet"),
        states=_eval_part_files("json"),
        index="results/{dataset}/index/test.parquet",
    output:
        per_image="results/{dataset}/{run}/eval/{variant}/per_image.parquet",
        summary="results/{dataset}/{run}/eval/{variant}/summary.json",
    params:
        evaluation=EVAL_SECTION,
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        meta=_eval_meta,
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate/{dataset}/{run}/{variant}/merge.log",
    benchmark:
        "logs/evaluate/{dataset}/{run}/{variant}/merge.bench.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/evaluate.py"


rule evaluate_baselines:
    input:
        index="results/{dataset}/index/test.parquet",
        scores=_baseline_scores,
        masks=_eval_masks,
    output:
        center="results/{dataset}/baselines/center/summary.json",
        full="results/{dataset}/baselines/full/summary.json",
    params:
        evaluation=EVAL_SECTION,
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        masks=_eval_masks_param,
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate/{dataset}/baselines.log",
    benchmark:
        "logs/evaluate/{dataset}/baselines.bench.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/evaluate.py"
