# CAM extraction: run embeddings -> one extraction job per CAM cache shard -> shard index -> overlays.
#
# Needs from common.smk: `config`, PRETRAINED_MARKER and the data stage's `checkpoint index`
# (output results/{dataset}/index/test.parquet). The variant wildcard is
# genpromp.config.variant_name(mode, ratio, timesteps), e.g. top1_w0.60_t0-99; the run folder fixes the
# tokens (runs.<run>.tokens: trained | meta | path) and the UNet (runs.<run>.unet: finetuned | pretrained | path).
# Its input functions live in common.smk (section "cams").

rule embeddings:
    input:
        marker=PRETRAINED_MARKER,
        classes="results/{dataset}/index/classes.parquet",
        test_index="results/{dataset}/index/test.parquet",
        tokens=_cam_tokens_input,
        scores=_embeddings_scores,
    output:
        "results/{dataset}/{run}/embeddings.safetensors",
    params:
        pretrained=lambda wc, input: str(Path(input.marker).parent.parent),
        tokens=cam_tokens_arg,
    conda:
        "../../environment.yml"
    log:
        "logs/cams/{dataset}/{run}/embeddings.log",
    benchmark:
        "logs/cams/{dataset}/{run}/embeddings.bench.tsv"
    threads: 1
    resources:
        mem_mb=measured("embeddings", "mem_mb"),
        runtime=measured("embeddings", "runtime"),
        gpu=1,
        gpu_mem_mb=measured("embeddings", "gpu_mem_mb"),
    script:
        "../scripts/embeddings.py"


rule extract_cams:
    input:
        index="results/{dataset}/index/test.parquet",
        embeddings="results/{dataset}/{run}/embeddings.safetensors",
        pretrained=PRETRAINED_MARKER,
        unet=_cam_unet_marker,
        scores=_cam_scores,
    output:
        "results/{dataset}/{run}/cams/{variant}/shard-{shard}.npz",
    params:
        unet=cam_unet_dir,
        config=lambda wc: stage_config(wc.dataset, "test"),
    conda:
        "../../environment.yml"
    log:
        "logs/cams/{dataset}/{run}/{variant}/shard-{shard}.log",
    benchmark:
        "logs/cams/{dataset}/{run}/{variant}/shard-{shard}.bench.tsv"
    threads: 2
    resources:
        mem_mb=measured("extract_cams", "mem_mb"),
        runtime=measured("extract_cams", "runtime"),
        gpu=1,
        gpu_mem_mb=measured("extract_cams", "gpu_mem_mb"),
    script:
        "../scripts/extract_cams.py"


rule cam_index:
    input:
        cam_shard_paths,
    output:
        "results/{dataset}/{run}/cams/{variant}/index.parquet",
    conda:
        "../../environment.yml"
    log:
        "logs/cams/{dataset}/{run}/{variant}/index.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/cam_index.py"


rule overlays:
    input:
        cams="results/{dataset}/{run}/cams/{variant}/index.parquet",
        index="results/{dataset}/index/test.parquet",
    output:
        report(
            directory("results/{dataset}/{run}/cams/{variant}/overlays"),
            patterns=["{name}.png"],
            caption="../report/overlays.rst",
            category="Overlays",
            subcategory="{dataset} {run} {variant}",
        ),
    params:
        root=lambda wc: image_root_for(config["datasets"][wc.dataset]),
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        n_vis=config["test"]["n_vis"],
        frame=config["evaluation"]["frame"],
    conda:
        "../../environment.yml"
    log:
        "logs/cams/{dataset}/{run}/{variant}/overlays.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/overlays.py"
