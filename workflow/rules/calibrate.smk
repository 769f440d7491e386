# Threshold calibration on held-out labelled images (config evaluation.calibration; off when null).
#
# The held-out images are the first evaluation.calibration.images_per_class boxed training images of each
# class (results/{dataset}/index/heldout.parquet, a checkpoint: its size sets the CAM shard count). Their
# CAMs are extracted in gtk mode by the same script as the test CAMs and scored by the same evaluation;
# rule calibrate reads that held-out summary and a test summary and writes the test numbers at the
# held-out-chosen thresholds next to the fixed and the test-chosen ones (genpromp/evaluation/calibration.py).
# A top1/top5 test variant is calibrated on the gtk held-out CAMs of the same ratio and timesteps: both
# protocols choose thresholds on the ground-truth-class map, which the mode does not change.
# Included by common.smk after `measured`; needs PRETRAINED_MARKER, stage_config and the cams input
# functions (_cam_unet_marker, cam_unet_dir). Input functions live in evaluate_inputs.smk.

checkpoint heldout_index:
    input:
        train="results/{dataset}/index/train.parquet",
    output:
        "results/{dataset}/index/heldout.parquet",
    params:
        images_per_class=lambda wc: config["evaluation"]["calibration"]["images_per_class"],
    conda:
        "../../environment.yml"
    log:
        "logs/calibrate/{dataset}/heldout_index.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/heldout_index.py"


rule extract_heldout_cams:
    input:
        index="results/{dataset}/index/heldout.parquet",
        embeddings="results/{dataset}/{run}/embeddings.safetensors",
        pretrained=PRETRAINED_MARKER,
        unet=_cam_unet_marker,
    output:
        "results/{dataset}/{run}/heldout/cams/{variant}/shard-{shard}.npz",
    wildcard_constraints:
        variant=r"gtk_w[0-9.]+_t[0-9-]+",
    params:
        unet=cam_unet_dir,
        config=lambda wc: stage_config(wc.dataset, "test"),
    conda:
        "../../environment.yml"
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/shard-{shard}.log",
    benchmark:
        "logs/calibrate/{dataset}/{run}/{variant}/shard-{shard}.bench.tsv"
    threads: 2
    resources:
        mem_mb=measured("extract_cams", "mem_mb"),
        runtime=measured("extract_cams", "runtime"),
        gpu=1,
        gpu_mem_mb=measured("extract_cams", "gpu_mem_mb"),
    script:
        "../scripts/extract_cams.py"


rule heldout_cam_index:
    input:
        heldout_cam_shard_paths,
    output:
        "results/{dataset}/{run}/heldout/cams/{variant}/index.parquet",
    conda:
        "../../environment.yml"
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/index.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/cam_index.py"


rule evaluate_heldout:
    input:
        cams="results/{dataset}/{run}/heldout/cams/{variant}/index.parquet",
        shards=heldout_cam_shard_paths,
        index="results/{dataset}/index/heldout.parquet",
    output:
        per_image="results/{dataset}/{run}/heldout/eval/{variant}/per_image.parquet",
        summary="results/{dataset}/{run}/heldout/eval/{variant}/summary.json",
    params:
        evaluation=EVAL_SECTION,
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        meta=lambda wc: {"dataset": wc.dataset, "run": wc.run, "variant": wc.variant, "split": "heldout"},
    conda:
        "../../environment.yml"
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/evaluate.log",
    benchmark:
        "logs/calibrate/{dataset}/{run}/{variant}/evaluate.bench.tsv"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=lambda wc, threads: 10 + config["evaluation"]["shard_size"] // (100 * threads),
    script:
        "../scripts/evaluate.py"


rule calibrate:
    input:
        test="results/{dataset}/{run}/eval/{variant}/summary.json",
        heldout=heldout_summary_for,
    output:
        "results/{dataset}/{run}/eval/{variant}/calibration.json",
    params:
        meta=lambda wc: {"dataset": wc.dataset, "run": wc.run, "variant": wc.variant},
    conda:
        "../../environment.yml"
    log:
        "logs/calibrate/{dataset}/{run}/{variant}/calibrate.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/calibrate.py"
