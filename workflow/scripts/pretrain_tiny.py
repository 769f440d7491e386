"""Rule `pretrain_tiny`: build the tiny SD-1.4-topology model and pretrain it on the demo corpus."""

from pathlib import Path

import torch

from genpromp.logs import script_logging
from genpromp.demo.pretrain import pretrain_tiny, settings_from_config
from genpromp.tracking import tracking_spec

sm = script_logging(snakemake)  # noqa: F821
torch.set_num_threads(sm.threads)
pretrain_tiny(
    corpus_dir=Path(sm.input.corpus).parent,
    tokenizer_dir=Path(sm.input.tokenizer).parent,
    out_dir=sm.params.out,
    loss_csv=sm.output.loss,
    samples_png=sm.output.samples,
    diagnostic_json=sm.output.diagnostic,
    settings=settings_from_config(sm.params.config),
    # compute.tracker is read from the full config: it is not a param, so switching it reruns nothing
    tracking=tracking_spec(sm.config, "demo_model", "pretrain_tiny"),
)
