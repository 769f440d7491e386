"""Checkpoint `index`: index one dataset into results/<dataset>/index/*.parquet."""

import logging
from pathlib import Path

from genpromp.data.indexing import index_dataset

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
index_dataset(
    snakemake.params.dataset,
    out_dir=Path(snakemake.output.test).parent,
    tokenizer=Path(snakemake.input.tokenizer).parent,
    verify=snakemake.params.verify,
    threads=snakemake.threads,
)
