"""Rule `train_unet`: stage-2 UNet finetune (resumable), or copy of `train_unet.load_unet_path`."""

import logging
import sys
from pathlib import Path

from genpromp.training.stage2 import run_train_unet_job

sys.stderr = open(snakemake.log[0], "a")
logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
# the stage's config view plus the tracker settings, which are kept out of its params (no rerun on a change)
config = dict(snakemake.params.config)
config["compute"] = {**config["compute"], **{k: snakemake.config["compute"][k] for k in ("tracker", "tracking_dir")}}
run_train_unet_job(
    config,
    snakemake.wildcards.dataset,
    out_dir=Path(snakemake.output.marker).parent,
    log_csv=snakemake.output.log_csv,
    tokens=snakemake.input.tokens,
)
