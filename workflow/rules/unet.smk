# Stage 2: finetune the UNet with the learned concept tokens (docs/method.md § Stage 2).
# Output: results/<dataset>/unet/ in diffusers layout (marker config.json). A killed job resumes
# from results/<dataset>/unet.partial/checkpoint (every train_unet.save_steps optimizer steps).
# With train_unet.load_unet_path set, that finetuned unet/ folder is validated and copied instead.


rule train_unet:
    input:
        train="results/{dataset}/index/train.parquet",
        classes="results/{dataset}/index/classes.parquet",
        tokens="results/{dataset}/tokens/tokens.safetensors",
        model=PRETRAINED_MARKER,
    output:
        marker="results/{dataset}/unet/config.json",
        log_csv="results/{dataset}/unet.log.csv",
    params:
        config=lambda wc: stage_config(wc.dataset, "train_unet"),
        load_unet_path=config["train_unet"]["load_unet_path"],
    conda:
        "../../environment.yml"
    log:
        "logs/unet/{dataset}.log",
    benchmark:
        "logs/unet/{dataset}.bench.tsv"
    threads: 2
    resources:
        mem_mb=measured("train_unet", "mem_mb"),
        runtime=measured("train_unet", "runtime"),
        gpu=max(config["compute"]["gpus"], 0),
        gpu_mem_mb=measured("train_unet", "gpu_mem_mb"),
    script:
        "../scripts/train_unet.py"
