"""Rule `train_token`: stage-1 concept tokens for one class shard (resumable, so the log is appended to)."""

from genpromp.logs import script_logging
from genpromp.stage_params import with_tracking
from genpromp.training.tokens import run_train_token_job

sm = script_logging(snakemake, append=True)  # noqa: F821
run_train_token_job(with_tracking(sm.params.config, sm.config), sm.wildcards.dataset, int(sm.wildcards.shard),
                    train=sm.input.train, classes=sm.input.classes, out=sm.output.tokens, log_csv=sm.output.log_csv)
