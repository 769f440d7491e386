"""Rule `train_unet`: stage-2 UNet finetune (resumable, so the log is appended to), or a copy of
`train_unet.load_unet_path`."""

from pathlib import Path

from genpromp.logs import script_logging
from genpromp.stage_params import with_tracking
from genpromp.training.unet import run_train_unet_job

sm = script_logging(snakemake, append=True)  # noqa: F821
run_train_unet_job(with_tracking(sm.params.config, sm.config), sm.wildcards.dataset, train=sm.input.train,
                   classes=sm.input.classes, tokens=sm.input.tokens, out_dir=Path(sm.output.marker).parent,
                   log_csv=sm.output.log_csv)
