"""Rule `pretrain_tiny`: build the tiny SD-1.4-topology model and pretrain it on the demo corpus."""

import logging
from pathlib import Path

import torch

from genpromp.models.pretrain import pretrain_tiny, settings_from_config
from genpromp.tracking import tracking_spec

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
torch.set_num_threads(snakemake.threads)
pretrain_tiny(
    corpus_dir=Path(snakemake.input.corpus).parent,
    tokenizer_dir=Path(snakemake.input.tokenizer).parent,
    out_dir=snakemake.params.out,
    loss_csv=snakemake.output.loss,
    samples_png=snakemake.output.samples,
    diagnostic_json=snakemake.output.diagnostic,
    settings=settings_from_config(snakemake.params.config),
    # compute.tracker is read from the full config: it is not a param, so switching it reruns nothing
    tracking=tracking_spec(snakemake.config, "demo_model", "pretrain_tiny"),
)
