# Evaluation: score each CAM cache (both protocols) in parts, merge, and score the map-free baselines.
#
# Needs from common.smk: `config` and the data stage's `checkpoint index` (results/{dataset}/index/test.parquet).
# Outputs used by the lead's target list:
#   results/{dataset}/{run}/eval/{variant}/per_image.parquet, .../summary.json   (rule merge_eval)
#   results/{dataset}/baselines/{center,full}/summary.json                       (rule evaluate_baselines)
# Parts (rule evaluate_shard): results/{dataset}/{run}/eval/{variant}/parts/part-{part}.{parquet,json}; part p
# holds whole CAM shards, evaluation.shard_size images rounded to whole CAM shards (test.shard_size each);
# their number follows the test set size (read after the index checkpoint). The variant wildcard is
# genpromp.config.variant_name(mode, ratio, timesteps), e.g. top1_w0.60_t0-99; gtk variants need no scores.
import re as _eval_re

import pandas as _eval_pd

from genpromp.evaluation.evaluate import eval_part_shards as _eval_part_shards

EVAL_VARIANT_RE = _eval_re.compile(r"(?P<mode>gtk|top1|top5)_w(?P<ratio>[0-9.]+)_t(?P<ts>[0-9-]+)")


wildcard_constraints:
    part=r"[0-9]+",


def _eval_scores(wildcards):
    ds = config["datasets"][wildcards.dataset]
    if wildcards.variant.startswith("gtk_") or not ds.get("classifier"):
        return []
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet"


def _baseline_scores(wildcards):
    ds = config["datasets"][wildcards.dataset]
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet" if ds.get("classifier") else []


def eval_parts(wildcards):
    """CAM shard numbers of each evaluation part of the dataset (list of lists); needs the index checkpoint."""
    test = checkpoints.index.get(dataset=wildcards.dataset).output.test
    n_images = _eval_pd.read_parquet(test, columns=["image_id"]).shape[0]
    return _eval_part_shards(n_images, config["test"]["shard_size"], config["evaluation"]["shard_size"])


def _part_cam_shards(wildcards):
    parts = eval_parts(wildcards)
    p = int(wildcards.part)
    if p >= len(parts):
        raise WorkflowError(f"evaluation part {p} does not exist for {wildcards.dataset} ({len(parts)} parts)")
    return parts[p]


def _part_cam_files(wildcards):
    return [f"results/{wildcards.dataset}/{wildcards.run}/cams/{wildcards.variant}/shard-{k:05d}.npz"
            for k in _part_cam_shards(wildcards)]


def _eval_part_files(kind):
    def files(wildcards):
        return [f"results/{wildcards.dataset}/{wildcards.run}/eval/{wildcards.variant}/parts/part-{p:05d}.{kind}"
                for p in range(len(eval_parts(wildcards)))]
    return files


def _eval_meta(wildcards):
    match = EVAL_VARIANT_RE.fullmatch(wildcards.variant)
    return {"dataset": wildcards.dataset, "run": wildcards.run, "variant": wildcards.variant,
            "mode": match["mode"] if match else None, "ratio": float(match["ratio"]) if match else None,
            "cams": f"results/{wildcards.dataset}/{wildcards.run}/cams/{wildcards.variant}",
            "scores": _eval_scores(wildcards) or None}


rule evaluate_shard:
    input:
        cams="results/{dataset}/{run}/cams/{variant}/index.parquet",
        shards=_part_cam_files,
        index="results/{dataset}/index/test.parquet",
        scores=_eval_scores,
    output:
        per_image="results/{dataset}/{run}/eval/{variant}/parts/part-{part}.parquet",
        state="results/{dataset}/{run}/eval/{variant}/parts/part-{part}.json",
    params:
        evaluation=config["evaluation"],
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        shards=_part_cam_shards,
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
        evaluation=config["evaluation"],
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        meta=_eval_meta,
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
    output:
        center="results/{dataset}/baselines/center/summary.json",
        full="results/{dataset}/baselines/full/summary.json",
    params:
        evaluation=config["evaluation"],
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
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
