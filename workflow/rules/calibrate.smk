# Threshold calibration on held-out labelled images (config evaluation.calibration; off when null).
#
# The held-out images are the first evaluation.calibration.images_per_class boxed training images of each
# class (the `heldout` index table, a checkpoint: its size sets the CAM shard count). Their CAMs are
# extracted in gtk mode by the same code as the test CAMs and scored by the same evaluation; rule calibrate
# reads that held-out summary and a test summary and writes the test numbers at the held-out-chosen
# thresholds next to the fixed and the test-chosen ones (genpromp/evaluation/calibration.py). A top1/top5
# test variant is calibrated on the gtk held-out CAMs of the same ratio and timesteps
# (genpromp.layout.Variant.heldout). Uses the cams stage's UNet input functions and its encode_latents
# rule (cams.smk; split heldout).


# Input functions (genpromp.plan). The number of held-out CAM shards follows the held-out index (a checkpoint).
heldout_cam_shard_paths = lambda wc: plan.cam_shard_files(
    config, wc.dataset, wc.run, wc.variant, checkpoints.heldout_index.get(dataset=wc.dataset).output[0], split="heldout"
)
heldout_summary_for = lambda wc: plan.heldout_summary(wc.dataset, wc.run, wc.variant)


checkpoint heldout_index:
    input:
        train=layout.index_table("{dataset}", "train"),
    output:
        layout.index_table("{dataset}", "heldout"),
    log:
        "logs/calibrate/{dataset}/heldout_index.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        images_per_class=lambda wc: config["evaluation"]["calibration"]["images_per_class"],
    script:
        "../scripts/heldout_index.py"


rule extract_heldout_cams:
    input:
        index=layout.index_table("{dataset}", "heldout"),
        latents=layout.latent_shard("{dataset}", "{shard}", split="heldout"),
        embeddings=run_embeddings,
        pretrained=PRETRAINED_MARKER,
        unet=cam_unet_marker,
    output:
        layout.cam_shard("{dataset}", "{run}", "{variant}", "{shard}", split="heldout"),
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/shard-{shard}.log",
    benchmark:
        "logs/calibrate/{dataset}/{run}/{variant}/shard-{shard}.bench.tsv"
    wildcard_constraints:
        variant=layout.GTK_VARIANT_PATTERN,
    conda:
        "../../environment.yml"
    threads: job_threads("extract_cams", config)
    resources:
        mem_mb=measured("extract_cams", "mem_mb"),
        runtime=measured("extract_cams", "runtime"),
        gpu=1,
        gpu_mem_mb=measured("extract_cams", "gpu_mem_mb"),
    params:
        unet=cam_unet_dir,
        root=image_root,
        config=lambda wc: stage_view(config, wc.dataset, "test"),
    script:
        "../scripts/extract_heldout_cams.py"


rule heldout_cam_index:
    input:
        heldout_cam_shard_paths,
    output:
        layout.cam_index("{dataset}", "{run}", "{variant}", split="heldout"),
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/index.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    script:
        "../scripts/heldout_cam_index.py"


rule evaluate_heldout:
    input:
        cams=layout.cam_index("{dataset}", "{run}", "{variant}", split="heldout"),
        shards=heldout_cam_shard_paths,
        index=layout.index_table("{dataset}", "heldout"),
    output:
        per_image=layout.per_image("{dataset}", "{run}", "{variant}", split="heldout"),
        summary=layout.summary("{dataset}", "{run}", "{variant}", split="heldout"),
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/evaluate.log",
    benchmark:
        "logs/calibrate/{dataset}/{run}/{variant}/evaluate.bench.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=per_attempt(3000),
        runtime=lambda wc, threads, attempt: for_attempt(
            10 + config["evaluation"]["shard_size"] // (100 * threads), attempt
        ),
    params:
        evaluation=EVALUATION,
        cam_thr=cam_thr,
        meta=lambda wc: {"dataset": wc.dataset, "run": wc.run, "variant": wc.variant, "split": "heldout"},
    script:
        "../scripts/evaluate_heldout.py"


rule calibrate:
    input:
        test=layout.summary("{dataset}", "{run}", "{variant}"),
        heldout=heldout_summary_for,
    output:
        layout.calibration("{dataset}", "{run}", "{variant}"),
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/calibrate.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(5),
    params:
        meta=lambda wc: {"dataset": wc.dataset, "run": wc.run, "variant": wc.variant},
    script:
        "../scripts/calibrate.py"
