# The embedded demo world (genpromp.demo): the generated CUB- and ILSVRC-layout datasets with their corpus,
# the demo classifier that scores them, and the tiny SD-1.4-topology model pretrained on the corpus, which
# stands in for Stable Diffusion 1.4. Rules exist only with demo.enabled. Contract for the other rules:
# the dataset marker files (demo_markers), the classifier's score file (datasets.<d>.classifier.path) and
# PRETRAINED_MARKER (<pretrained>/unet/config.json; the whole <pretrained>/ folder is written atomically with it),
# and with demo.world parts each dataset's part-box listing (demo_part_listings).
from genpromp.demo.world import demo_part_listings, demo_scores_path

DEMO = config["demo"]
# The 1000 ILSVRC class names the ImageNet-layout demo dataset draws from: an existing file
# (demo.synset_mapping) or the one rule `assets_synsets` builds.
DEMO_SYNSETS = DEMO["synset_mapping"] or ASSETS_SYNSETS
DEMO_RESULTS = layout.demo_model_dir()

if DEMO["enabled"]:

    rule demo_world:
        input:
            synsets=DEMO_SYNSETS,
        output:
            markers=list(demo_markers(config).values()),
            # demo.world parts: the head box of every image (genpromp.baselines.peaks reads it)
            parts=list(demo_part_listings(config).values()),
            corpus=f"{DEMO['root']}/corpus/captions.csv",
        log:
            "logs/data/demo_world.log",
        benchmark:
            "logs/data/demo_world.bench.tsv"
        conda:
            "../../environment.yml"
        threads: 1
        resources:
            mem_mb=per_attempt(2000),
            runtime=per_attempt(30),
        params:
            # only what the generator reads, so unrelated config changes do not regenerate the data
            config={
                "seed": config["seed"],
                "demo": {
                    **{k: v for k, v in DEMO.items() if k != "tiny_model"},
                    "tiny_model": {"resolution": DEMO["tiny_model"]["resolution"]},
                },
                "datasets": {n: {"layout": d["layout"], "root": d["root"]} for n, d in DATASETS.items()},
            },
        script:
            "../scripts/demo_world.py"

    rule classifier:
        input:
            train=layout.index_table("{dataset}", "train"),
            test=layout.index_table("{dataset}", "test"),
            classes=layout.index_table("{dataset}", "classes"),
        output:
            demo_scores_path(DEMO["root"], "{dataset}"),
        log:
            "logs/data/classifier_{dataset}.log",
        benchmark:
            "logs/data/classifier_{dataset}.bench.tsv"
        conda:
            "../../environment.yml"
        threads: 1
        resources:
            mem_mb=per_attempt(2000),
            runtime=per_attempt(30),
        params:
            dataset=lambda w: dataset_view(config, w.dataset),
            epochs=DEMO["classifier_epochs"],
            seed=config["seed"],
        script:
            "../scripts/classifier.py"

    rule pretrain_tiny:
        input:
            corpus=f"{DEMO['root']}/corpus/captions.csv",
            tokenizer=ASSETS_TOKENIZER,
        output:
            marker=PRETRAINED_MARKER,
            samples=report(
                f"{DEMO_RESULTS}/samples.png", category="Demo model", labels={"figure": "pretraining samples"}
            ),
            loss=report(
                f"{DEMO_RESULTS}/pretrain_loss.csv", category="Demo model", labels={"table": "pretraining loss"}
            ),
            diagnostic=f"{DEMO_RESULTS}/diagnostic.json",
        log:
            "logs/model/pretrain_tiny.log",
        benchmark:
            "logs/model/pretrain_tiny.bench.tsv"
        conda:
            "../../environment.yml"
        threads: 2
        resources:
            mem_mb=per_attempt(4000),
            runtime=per_attempt(60),
        params:
            # image_size / object_size / outline: the diagnostic's probe images look like the demo datasets
            config={
                "seed": config["seed"],
                "demo": {k: DEMO[k] for k in ("tiny_model", "image_size", "object_size", "outline")},
            },
            out=lambda wc, output: str(Path(output.marker).parent.parent),
        script:
            "../scripts/pretrain_tiny.py"
