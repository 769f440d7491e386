# CAM extraction: a run's class embeddings -> one extraction job per CAM cache shard -> shard index ->
# overlays. The {variant} wildcard is a genpromp.layout.Variant name (e.g. top1_w0.60_t0-99); the run
# fixes the tokens (runs.<run>.tokens: trained | meta | a path) and the UNet (runs.<run>.unet:
# finetuned | pretrained | a path). The number of shards follows the test index (a checkpoint).
import pandas as pd

from genpromp.data.indexing import image_root_for


def cam_tokens_arg(wildcards):
    """What the embeddings get as tokens: 'meta' or a token file / folder path."""
    tokens = config["runs"][wildcards.run]["tokens"]
    return layout.tokens(wildcards.dataset) if tokens == "trained" else tokens


def cam_tokens_input(wildcards):
    tokens = cam_tokens_arg(wildcards)
    return [] if tokens == "meta" else tokens


def cam_unet_dir(wildcards):
    """The run's UNet folder, or None for the pretrained model's own unet/."""
    unet = config["runs"][wildcards.run]["unet"]
    if unet == "finetuned":
        return layout.unet_dir(wildcards.dataset)
    return None if unet == "pretrained" else unet


def cam_unet_marker(wildcards):
    folder = cam_unet_dir(wildcards)
    return PRETRAINED_MARKER if folder is None else f"{folder}/config.json"


def cam_scores(wildcards):
    """Classifier scores for a top1/top5 variant (the classes it localizes); none for gtk."""
    if not layout.Variant.parse(wildcards.variant).needs_scores:
        return []
    if not DATASETS[wildcards.dataset].get("classifier"):
        raise WorkflowError(f"variant {wildcards.variant} needs classifier scores; config key "
                            f"datasets.{wildcards.dataset}.classifier is not set")
    return scores_path(wildcards.dataset)


def embeddings_scores(wildcards):
    """The classifier scores when a main variant localizes predicted classes (top1/top5): the run's
    embeddings then also cover the predicted classes outside keep_class."""
    if not DATASETS[wildcards.dataset].get("classifier") or set(TEST["eval_modes"]) <= {"gtk"}:
        return []
    return scores_path(wildcards.dataset)


def n_test_images(dataset):
    """Images of the test index (a checkpoint: the call waits until it exists)."""
    test = checkpoints.index.get(dataset=dataset).output.test
    return pd.read_parquet(test, columns=["image_id"]).shape[0]


def cam_shard_paths(wildcards):
    """Every shard file of a variant's CAM cache."""
    return layout.cam_shards(wildcards.dataset, wildcards.run, wildcards.variant,
                             n_test_images(wildcards.dataset), TEST["shard_size"])


rule embeddings:
    input:
        marker=PRETRAINED_MARKER,
        classes=layout.index_table("{dataset}", "classes"),
        test_index=layout.index_table("{dataset}", "test"),
        tokens=cam_tokens_input,
        scores=embeddings_scores,
    output:
        layout.embeddings("{dataset}", "{run}"),
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
        index=layout.index_table("{dataset}", "test"),
        embeddings=layout.embeddings("{dataset}", "{run}"),
        pretrained=PRETRAINED_MARKER,
        unet=cam_unet_marker,
        scores=cam_scores,
    output:
        layout.cam_shard("{dataset}", "{run}", "{variant}", "{shard}"),
    params:
        unet=cam_unet_dir,
        root=lambda wc: image_root_for(DATASETS[wc.dataset]),
        config=lambda wc: stage_view(config, wc.dataset, "test"),
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
        layout.cam_index("{dataset}", "{run}", "{variant}"),
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
        cams=layout.cam_index("{dataset}", "{run}", "{variant}"),
        index=layout.index_table("{dataset}", "test"),
    output:
        report(
            directory(layout.overlays("{dataset}", "{run}", "{variant}")),
            patterns=["{name}.png"],
            caption="../report/overlays.rst",
            category="Overlays",
            subcategory="{dataset} {run} {variant}",
        ),
    params:
        root=lambda wc: image_root_for(DATASETS[wc.dataset]),
        cam_thr=lambda wc: DATASETS[wc.dataset]["cam_thr"],
        n_vis=TEST["n_vis"],
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
