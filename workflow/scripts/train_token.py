"""Rule `train_token`: stage-1 concept tokens for one class shard (resumable)."""

import logging
import sys

from genpromp.training.stage1 import run_train_token_job

sys.stderr = open(snakemake.log[0], "a")
logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
# the stage's config view plus the tracker settings, which are kept out of its params (no rerun on a change)
config = dict(snakemake.params.config)
config["compute"] = {**config["compute"], **{k: snakemake.config["compute"][k] for k in ("tracker", "tracking_dir")}}
run_train_token_job(
    config,
    snakemake.wildcards.dataset,
    int(snakemake.wildcards.shard),
    out=snakemake.output.tokens,
    log_csv=snakemake.output.log_csv,
)
