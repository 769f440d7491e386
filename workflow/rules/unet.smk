# Stage 2: finetune the UNet with the learned concept tokens (docs/method.md § Stage 2). Output: the
# dataset's unet/ folder in diffusers layout (marker config.json). A killed job resumes from unet.partial/
# next to it (a checkpoint every train_unet.save_steps optimizer steps). With train_unet.load_unet_path
# set, that finetuned unet/ folder is validated and copied instead.


rule train_unet:
    input:
        train=layout.index_table("{dataset}", "train"),
        classes=layout.index_table("{dataset}", "classes"),
        tokens=layout.tokens("{dataset}"),
        model=PRETRAINED_MARKER,
    output:
        marker=layout.unet_marker("{dataset}"),
        log_csv=layout.unet_log("{dataset}"),
    log:
        "logs/unet/{dataset}.log",
    benchmark:
        "logs/unet/{dataset}.bench.tsv"
    conda:
        "../../environment.yml"
    threads: job_threads("train_unet", config)
    resources:
        mem_mb=measured("train_unet", "mem_mb"),
        runtime=measured("train_unet", "runtime"),
        gpu=max(config["compute"]["gpus"], 0),
        # all of a multi-GPU job's processes on one node (accelerate launch starts them there)
        nodes=1,
        gpu_mem_mb=measured("train_unet", "gpu_mem_mb"),
    params:
        config=lambda wc: stage_view(config, wc.dataset, "train_unet"),
    script:
        "../scripts/train_unet.py"
