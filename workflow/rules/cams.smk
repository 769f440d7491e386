# CAM extraction: class embeddings (one file per token source, shared by the runs that use it) and the
# VAE latent cache (one file per test / held-out shard, shared by every variant and run) -> one
# extraction job per CAM cache shard -> shard index -> overlays. The {variant} wildcard is a genpromp.layout.Variant name (e.g. top1_w0.60_t0-99); the run
# fixes the tokens (runs.<run>.tokens: trained | meta | a path) and the UNet (runs.<run>.unet:
# finetuned | pretrained | a path). The number of shards follows the test index (a checkpoint).
from genpromp.data.indexing import image_root_for

# Input functions (genpromp.plan). The number of CAM shards follows the test index (a checkpoint).
embeddings_tokens = lambda wc: plan.tokens_for_key(config, wc.dataset, wc.tokens)
embeddings_tokens_input = lambda wc: plan.tokens_input(config, wc.dataset, wc.tokens)
run_embeddings = lambda wc: plan.run_embeddings(config, wc.dataset, wc.run)
cam_unet_dir = lambda wc: plan.run_unet_dir(config, wc.dataset, wc.run)
cam_unet_marker = lambda wc: plan.run_unet_marker(config, wc.dataset, wc.run)
cam_scores = lambda wc: plan.variant_scores(config, wc.dataset, wc.variant)
embeddings_scores = lambda wc: plan.embeddings_scores(config, wc.dataset)
image_root = lambda wc: image_root_for(config["datasets"][wc.dataset])
cam_shard_paths = lambda wc: plan.cam_shard_files(
    config, wc.dataset, wc.run, wc.variant, checkpoints.index.get(dataset=wc.dataset).output.test
)


rule embeddings:
    input:
        marker=PRETRAINED_MARKER,
        classes=layout.index_table("{dataset}", "classes"),
        test_index=layout.index_table("{dataset}", "test"),
        tokens=embeddings_tokens_input,
        scores=embeddings_scores,
    output:
        layout.embeddings("{dataset}", "{tokens}"),
    log:
        "logs/cams/{dataset}/embeddings/{tokens}.log",
    benchmark:
        "logs/cams/{dataset}/embeddings/{tokens}.bench.tsv"
    wildcard_constraints:
        tokens=layout.TOKENS_KEY_PATTERN,
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=measured("embeddings", "mem_mb"),
        runtime=measured("embeddings", "runtime"),
        gpu=1,
        gpu_mem_mb=measured("embeddings", "gpu_mem_mb"),
    params:
        pretrained=lambda wc, input: str(Path(input.marker).parent.parent),
        tokens=embeddings_tokens,
    script:
        "../scripts/embeddings.py"


rule encode_latents:
    input:
        index=layout.index_table("{dataset}", "{split}"),
        pretrained=PRETRAINED_MARKER,
    output:
        layout.latent_shard("{dataset}", "{shard}", split="{split}"),
    log:
        "logs/cams/{dataset}/latents/{split}/shard-{shard}.log",
    benchmark:
        "logs/cams/{dataset}/latents/{split}/shard-{shard}.bench.tsv"
    wildcard_constraints:
        split="test|heldout",
    conda:
        "../../environment.yml"
    threads: job_threads("extract_cams", config)
    resources:
        mem_mb=measured("extract_cams", "mem_mb"),
        runtime=measured("extract_cams", "runtime"),
        gpu=1,
        gpu_mem_mb=measured("extract_cams", "gpu_mem_mb"),
    params:
        root=image_root,
        config=lambda wc: plan.latent_view(config),
    script:
        "../scripts/encode_latents.py"


rule extract_cams:
    input:
        index=layout.index_table("{dataset}", "test"),
        latents=layout.latent_shard("{dataset}", "{shard}"),
        embeddings=run_embeddings,
        pretrained=PRETRAINED_MARKER,
        unet=cam_unet_marker,
        scores=cam_scores,
    output:
        layout.cam_shard("{dataset}", "{run}", "{variant}", "{shard}"),
    log:
        "logs/cams/{dataset}/{run}/{variant}/shard-{shard}.log",
    benchmark:
        "logs/cams/{dataset}/{run}/{variant}/shard-{shard}.bench.tsv"
    wildcard_constraints:
        run=plan.run_pattern(config, "genpromp"),  # method cam runs: rule extract_cam_baseline (baselines.smk)
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
        "../scripts/extract_cams.py"


rule cam_index:
    input:
        cam_shard_paths,
    output:
        layout.cam_index("{dataset}", "{run}", "{variant}"),
    log:
        "logs/cams/{dataset}/{run}/{variant}/index.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
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
    log:
        "logs/cams/{dataset}/{run}/{variant}/overlays.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        root=image_root,
        cam_thr=lambda wc: DATASETS[wc.dataset]["cam_thr"],
        n_vis=TEST["n_vis"],
        frame=config["evaluation"]["frame"],
    script:
        "../scripts/overlays.py"
