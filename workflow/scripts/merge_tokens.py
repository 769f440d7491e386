"""Rule `merge_tokens`: merge the shard token tables, or convert `train_token.load_token_path`."""

import logging
import sys

from genpromp.training.checkpoints import convert_tokens, merge_token_tables

sys.stderr = open(snakemake.log[0], "a")
logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
if snakemake.params.load_token_path:
    convert_tokens(snakemake.params.load_token_path, snakemake.output[0], snakemake.input.classes)
else:
    merge_token_tables(snakemake.input.shards, snakemake.output[0], snakemake.input.classes)
