# The demo's stand-in for Stable Diffusion 1.4: build the tiny SD-1.4-topology model and pretrain
# it on the captioned corpus. Included by the top-level Snakefile after common.smk / data.smk.
# Contract for other rules: the marker file PRETRAINED_MARKER (<pretrained>/unet/config.json); the
# whole <pretrained>/ folder is written atomically with it.

MODEL_RESULTS = "results/demo_model"

if config["demo"]["enabled"]:

    rule pretrain_tiny:
        input:
            corpus=f"{config['demo']['root']}/corpus/captions.csv",
            tokenizer="resources/assets/clip_tokenizer/vocab.json",
        output:
            marker=PRETRAINED_MARKER,
            samples=report(f"{MODEL_RESULTS}/samples.png", category="Demo model",
                           labels={"figure": "pretraining samples"}),
            loss=report(f"{MODEL_RESULTS}/pretrain_loss.csv", category="Demo model",
                        labels={"table": "pretraining loss"}),
            diagnostic=f"{MODEL_RESULTS}/diagnostic.json",
        params:
            # image_size / object_size / outline: the diagnostic's probe images look like the demo datasets
            config={"seed": config["seed"], "demo": {k: config["demo"][k] for k in ("tiny_model", "image_size", "object_size", "outline")}},
            out=lambda wc, output: str(Path(output.marker).parent.parent),
        conda:
            "../../environment.yml"
        log:
            "logs/model/pretrain_tiny.log",
        benchmark:
            "logs/model/pretrain_tiny.bench.tsv"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
        script:
            "../scripts/pretrain_tiny.py"
