# Evaluation: score each CAM cache on both protocols in parts, merge the parts, and score the map-free
# baselines. A part holds whole CAM shards: evaluation.shard_size images rounded to whole shards of
# test.shard_size; their number follows the test index (a checkpoint). With datasets.<d>.masks set, the
# parts and the baselines also count PxAP (the merged summary's "pxap"). gtk variants need no scores.
# Self-contained apart from `config` and the `index` checkpoint, so a test can include it on its own.
import pandas as pd

from genpromp import layout
from genpromp.demo.world import demo_markers
from genpromp.evaluation.evaluate import eval_part_shards
from genpromp.stage_params import evaluation_view


def eval_scores(wildcards):
    """The dataset's classifier scores, for top1/top5 variants (none for gtk or without a classifier)."""
    classifier = config["datasets"][wildcards.dataset].get("classifier")
    if not classifier or not layout.Variant.parse(wildcards.variant).needs_scores:
        return []
    return layout.scores(wildcards.dataset, classifier["name"])


def baseline_scores(wildcards):
    classifier = config["datasets"][wildcards.dataset].get("classifier")
    return layout.scores(wildcards.dataset, classifier["name"]) if classifier else []


def eval_masks(wildcards):
    """The dataset's mask listing (datasets.<d>.masks.listing), [] without masks. A demo dataset's masks are
    written with the dataset, so its marker file stands in for the listing (which does not exist before the
    demo world has run)."""
    masks = config["datasets"][wildcards.dataset].get("masks")
    if not masks:
        return []
    return demo_markers(config).get(wildcards.dataset) or masks["listing"]


def eval_masks_param(wildcards):
    return config["datasets"][wildcards.dataset].get("masks")


def eval_parts(wildcards):
    """CAM shard numbers of each evaluation part of the dataset (a list of lists)."""
    test = checkpoints.index.get(dataset=wildcards.dataset).output.test
    n_images = pd.read_parquet(test, columns=["image_id"]).shape[0]
    return eval_part_shards(n_images, config["test"]["shard_size"], config["evaluation"]["shard_size"])


def part_cam_shards(wildcards):
    parts = eval_parts(wildcards)
    p = int(wildcards.part)
    if p >= len(parts):
        raise WorkflowError(f"evaluation part {p} does not exist for {wildcards.dataset} ({len(parts)} parts)")
    return parts[p]


def part_cam_files(wildcards):
    return [layout.cam_shard(wildcards.dataset, wildcards.run, wildcards.variant, k)
            for k in part_cam_shards(wildcards)]


def eval_part_files(ext):
    def files(wildcards):
        return [layout.eval_part(wildcards.dataset, wildcards.run, wildcards.variant, p, ext)
                for p in range(len(eval_parts(wildcards)))]
    return files


def eval_meta(wildcards):
    """What the merged summary records about itself."""
    variant = layout.Variant.parse(wildcards.variant)
    return {"dataset": wildcards.dataset, "run": wildcards.run, "variant": wildcards.variant, "mode": variant.mode,
            "ratio": variant.ratio, "cams": layout.cam_dir(wildcards.dataset, wildcards.run, wildcards.variant),
            "scores": eval_scores(wildcards) or None}


def cam_thr(wildcards):
    return config["datasets"][wildcards.dataset]["cam_thr"]


rule evaluate_shard:
    input:
        cams=layout.cam_index("{dataset}", "{run}", "{variant}"),
        shards=part_cam_files,
        index=layout.index_table("{dataset}", "test"),
        scores=eval_scores,
        masks=eval_masks,
    output:
        per_image=layout.eval_part("{dataset}", "{run}", "{variant}", "{part}", "parquet"),
        state=layout.eval_part("{dataset}", "{run}", "{variant}", "{part}", "json"),
    params:
        evaluation=evaluation_view(config),
        cam_thr=cam_thr,
        shards=part_cam_shards,
        masks=eval_masks_param,
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
        "../scripts/evaluate_shard.py"


rule merge_eval:
    input:
        parts=eval_part_files("parquet"),
        states=eval_part_files("json"),
        index=layout.index_table("{dataset}", "test"),
    output:
        per_image=layout.per_image("{dataset}", "{run}", "{variant}"),
        summary=layout.summary("{dataset}", "{run}", "{variant}"),
    params:
        evaluation=evaluation_view(config),
        cam_thr=cam_thr,
        meta=eval_meta,
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
        "../scripts/merge_eval.py"


rule evaluate_baselines:
    input:
        index=layout.index_table("{dataset}", "test"),
        scores=baseline_scores,
        masks=eval_masks,
    output:
        center=layout.baseline_summary("{dataset}", "center"),
        full=layout.baseline_summary("{dataset}", "full"),
    params:
        evaluation=evaluation_view(config),
        cam_thr=cam_thr,
        masks=eval_masks_param,
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
        "../scripts/evaluate_baselines.py"
