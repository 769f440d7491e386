"""Checkpoint `index`: index one dataset into its train / test / classes tables."""

from pathlib import Path

from genpromp.data.indexing import index_dataset
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
index_dataset(sm.params.dataset, out_dir=Path(sm.output.test).parent, tokenizer=Path(sm.input.tokenizer).parent,
              verify=sm.params.verify, threads=sm.threads)
