# The discriminative CAM baseline (runs with method cam; genpromp/baselines/): a GAP CNN trained on the
# train split's class labels -> its class activation maps written as the run's CAM cache shards, under the
# same variant names as GenPromp's (mode picks the slots; ratio and timesteps do not apply), so cam_index,
# overlays, the evaluation, calibration and the tables treat the run like any other. Its test scores are
# in the classifier JSON format (a config can name them as datasets.<d>.classifier.path). Also: the
# side-by-side figure of every run on the same images and, on part-world demo datasets, where each run's
# maps peak relative to the discriminative part. Uses image_root and cam_scores from cams.smk.
from genpromp.demo.world import demo_part_listings

# Input functions (genpromp.plan). Each CAM shard of a cam run comes from this file's rules only.
CAM_RUN_PATTERN = plan.run_pattern(config, "cam")
baseline_heldout_shards = lambda wc: plan.cam_shard_files(
    config, wc.dataset, wc.run, wc.variant, checkpoints.heldout_index.get(dataset=wc.dataset).output[0], split="heldout"
)
comparison_indexes = lambda wc: plan.comparison_indexes(config, wc.dataset, plan.comparison_variant(config))
part_listing = lambda wc: demo_part_listings(config)[wc.dataset]


ruleorder: extract_cam_baseline_heldout > extract_heldout_cams


rule train_cam_baseline:
    input:
        train=layout.index_table("{dataset}", "train"),
        test=layout.index_table("{dataset}", "test"),
        classes=layout.index_table("{dataset}", "classes"),
    output:
        model=layout.cam_baseline_model("{dataset}"),
        scores=layout.cam_baseline_scores("{dataset}"),
    log:
        "logs/baselines/{dataset}/train_cam_baseline.log",
    benchmark:
        "logs/baselines/{dataset}/train_cam_baseline.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(30),
    params:
        root=image_root,
        settings=config["cam_baseline"],
        seed=config["seed"],
    script:
        "../scripts/train_cam_baseline.py"


rule extract_cam_baseline:
    input:
        index=layout.index_table("{dataset}", "test"),
        model=layout.cam_baseline_model("{dataset}"),
        scores=cam_scores,
    output:
        layout.cam_shard("{dataset}", "{run}", "{variant}", "{shard}"),
    log:
        "logs/baselines/{dataset}/{run}/{variant}/shard-{shard}.log",
    wildcard_constraints:
        run=CAM_RUN_PATTERN,
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        root=image_root,
        shard_size=TEST["shard_size"],
        cam_size=TEST["cam_size"],
    script:
        "../scripts/extract_cam_baseline.py"


rule extract_cam_baseline_heldout:
    input:
        index=layout.index_table("{dataset}", "heldout"),
        model=layout.cam_baseline_model("{dataset}"),
    output:
        layout.cam_shard("{dataset}", "{run}", "{variant}", "{shard}", split="heldout"),
    log:
        "logs/baselines/{dataset}/{run}/heldout/{variant}/shard-{shard}.log",
    wildcard_constraints:
        run=CAM_RUN_PATTERN,
        variant=layout.GTK_VARIANT_PATTERN,
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        root=image_root,
        shard_size=TEST["shard_size"],
        cam_size=TEST["cam_size"],
    script:
        "../scripts/extract_cam_baseline_heldout.py"


rule part_peaks:
    input:
        cams=layout.cam_index("{dataset}", "{run}", "{variant}"),
        index=layout.index_table("{dataset}", "test"),
        parts=part_listing,
    output:
        layout.part_peaks("{dataset}", "{run}", "{variant}"),
    log:
        "logs/baselines/{dataset}/{run}/{variant}/part_peaks.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        meta=lambda wc: {"dataset": wc.dataset, "run": wc.run, "variant": wc.variant},
    script:
        "../scripts/part_peaks.py"


rule side_by_side:
    input:
        cams=comparison_indexes,
        index=layout.index_table("{dataset}", "test"),
    output:
        report(
            layout.figure("{dataset}", layout.COMPARISON_FIGURE),
            caption="../report/side_by_side.rst",
            category="Figures",
            subcategory="{dataset}",
        ),
    log:
        "logs/baselines/{dataset}/side_by_side.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        runs=plan.comparison_runs(config),
        root=image_root,
        cam_thr=lambda wc: DATASETS[wc.dataset]["cam_thr"],
        n_vis=TEST["n_vis"],
    script:
        "../scripts/side_by_side.py"
