# Evaluation: score each CAM cache on both protocols in parts, merge the parts, and score the map-free
# baselines. A part holds whole CAM shards: evaluation.shard_size images rounded to whole shards of
# test.shard_size; their number follows the test index (a checkpoint). With datasets.<d>.masks set, the
# parts and the baselines also count PxAP (the merged summary's "pxap"). gtk variants need no scores. The
# baselines write per-image tables like the variants' (the tables' confidence intervals read them).
# Self-contained apart from `config` and the `index` checkpoint, so a test can include it on its own.
from genpromp import layout, plan
from genpromp.demo.world import demo_markers
from genpromp.resources import for_attempt, per_attempt
from genpromp.stage_params import evaluation_view

# Input functions (genpromp.plan). The parts follow the test index (a checkpoint). A demo dataset's masks
# are written with the dataset, so its marker file stands in for the mask listing (which does not exist
# before the demo world has run).
eval_test_table = lambda wc: checkpoints.index.get(dataset=wc.dataset).output.test
eval_scores = lambda wc: plan.variant_scores(config, wc.dataset, wc.variant)
baseline_scores = lambda wc: plan.classifier_scores(config, wc.dataset)
eval_masks_param = lambda wc: config["datasets"][wc.dataset].get("masks")
eval_masks = lambda wc: (
    demo_markers(config).get(wc.dataset) or eval_masks_param(wc)["listing"] if eval_masks_param(wc) else []
)
part_cam_shards = lambda wc: plan.part_shards(config, wc.dataset, wc.part, eval_test_table(wc))
part_cam_files = lambda wc: plan.part_cam_files(config, wc.dataset, wc.run, wc.variant, wc.part, eval_test_table(wc))
eval_part_files = lambda ext: lambda wc: plan.eval_part_files(
    config, wc.dataset, wc.run, wc.variant, ext, eval_test_table(wc)
)
eval_meta = lambda wc: plan.eval_meta(config, wc.dataset, wc.run, wc.variant)
cam_thr = lambda wc: config["datasets"][wc.dataset]["cam_thr"]


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
    log:
        "logs/evaluate/{dataset}/{run}/{variant}/part-{part}.log",
    benchmark:
        "logs/evaluate/{dataset}/{run}/{variant}/part-{part}.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=per_attempt(3000),
        # ~10 ms of CPU per image and protocol sweep (benchmarks/bench_eval_sweep.py), with a wide margin
        runtime=lambda wc, threads, attempt: for_attempt(
            10 + config["evaluation"]["shard_size"] // (100 * threads), attempt
        ),
    params:
        evaluation=evaluation_view(config),
        cam_thr=cam_thr,
        shards=part_cam_shards,
        masks=eval_masks_param,
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
    log:
        "logs/evaluate/{dataset}/{run}/{variant}/merge.log",
    benchmark:
        "logs/evaluate/{dataset}/{run}/{variant}/merge.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(20),
    params:
        evaluation=evaluation_view(config),
        cam_thr=cam_thr,
        meta=eval_meta,
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
        center_per_image=layout.baseline_per_image("{dataset}", "center"),
        full_per_image=layout.baseline_per_image("{dataset}", "full"),
    log:
        "logs/evaluate/{dataset}/baselines.log",
    benchmark:
        "logs/evaluate/{dataset}/baselines.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        evaluation=evaluation_view(config),
        cam_thr=cam_thr,
        masks=eval_masks_param,
    script:
        "../scripts/evaluate_baselines.py"
