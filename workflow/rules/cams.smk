# CAM extraction: run embeddings -> one extraction job per CAM cache shard -> shard index -> overlays.
#
# Needs from common.smk: `config`, PRETRAINED_MARKER and the data stage's `checkpoint index`
# (output results/{dataset}/index/test.parquet). The variant wildcard is
# genpromp.config.variant_name(mode, ratio, timesteps), e.g. top1_w0.60_t0-99; the run folder fixes the
# tokens (runs.<run>.tokens: trained | meta | path) and the UNet (runs.<run>.unet: finetuned | pretrained | path).
import re as _re

import pandas as _pd

CAM_VARIANT_RE = _re.compile(r"(?P<mode>gtk|top1|top5)_w(?P<ratio>[0-9.]+)_t(?P<ts>[0-9-]+)")


def _cam_run(wildcards):
    return config["runs"][wildcards.run]


def _cam_variant(wildcards):
    match = CAM_VARIANT_RE.fullmatch(wildcards.variant)
    if match is None:
        raise WorkflowError(f"variant {wildcards.variant!r} is not <gtk|top1|top5>_w<ratio>_t<t1>-<t2>")
    return match


def cam_tokens_arg(wildcards):
    """What embeddings.py gets as tokens: 'meta' or a token file / folder path."""
    tokens = _cam_run(wildcards)["tokens"]
    if tokens == "trained":
        return f"results/{wildcards.dataset}/tokens/tokens.safetensors"
    return tokens


def _cam_tokens_input(wildcards):
    tokens = cam_tokens_arg(wildcards)
    return [] if tokens == "meta" else tokens


def cam_unet_dir(wildcards):
    """The run's UNet folder, or None for the pretrained model's own unet/."""
    unet = _cam_run(wildcards)["unet"]
    if unet == "finetuned":
        return f"results/{wildcards.dataset}/unet"
    return None if unet == "pretrained" else unet


def _cam_unet_marker(wildcards):
    folder = cam_unet_dir(wildcards)
    return PRETRAINED_MARKER if folder is None else f"{folder}/config.json"


def _cam_scores(wildcards):
    if _cam_variant(wildcards)["mode"] == "gtk":
        return []
    ds = config["datasets"][wildcards.dataset]
    if not ds.get("classifier"):
        raise WorkflowError(f"variant {wildcards.variant} needs classifier scores; config key "
                            f"datasets.{wildcards.dataset}.classifier is not set")
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet"


def cam_shard_paths(wildcards):
    """All shard files of a variant; their number follows the test index (a checkpoint)."""
    checkpoints.index.get(dataset=wildcards.dataset)  # re-evaluated once the index exists
    index = f"results/{wildcards.dataset}/index/test.parquet"
    n_images = _pd.read_parquet(index, columns=["image_id"]).shape[0]
    n_shards = max(1, -(-n_images // int(config["test"]["shard_size"])))
    return [f"results/{wildcards.dataset}/{wildcards.run}/cams/{wildcards.variant}/shard-{k:05d}.npz"
            for k in range(n_shards)]


rule embeddings:
    input:
        marker=PRETRAINED_MARKER,
        classes="results/{dataset}/index/classes.parquet",
        tokens=_cam_tokens_input,
    output:
        "results/{dataset}/{run}/embeddings.safetensors",
    params:
        pretrained=config["pretrained"],
        tokens=cam_tokens_arg,
    log:
        "logs/cams/{dataset}/{run}/embeddings.log",
    benchmark:
        "logs/cams/{dataset}/{run}/embeddings.bench.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=1,
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
    log:
        "logs/cams/{dataset}/{run}/{variant}/shard-{shard}.log",
    benchmark:
        "logs/cams/{dataset}/{run}/{variant}/shard-{shard}.bench.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    script:
        "../scripts/extract_cams.py"


rule cam_index:
    input:
        cam_shard_paths,
    output:
        "results/{dataset}/{run}/cams/{variant}/index.parquet",
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
        "results/{dataset}/{run}/cams/{variant}/overlays/index.html",
    params:
        root=lambda wc: config["datasets"][wc.dataset]["root"],
        cam_thr=lambda wc: config["datasets"][wc.dataset]["cam_thr"],
        n_vis=config["test"]["n_vis"],
        frame=config["evaluation"]["frame"],
    log:
        "logs/cams/{dataset}/{run}/{variant}/overlays.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/overlays.py"
