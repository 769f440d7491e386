"""Rule `merge_tokens`: merge the shard token tables, or convert `train_token.load_token_path`."""

from genpromp.logs import script_logging
from genpromp.training.checkpoints import convert_tokens, merge_token_tables

sm = script_logging(snakemake, append=True)  # noqa: F821
if sm.params.load_token_path:
    convert_tokens(sm.params.load_token_path, sm.output[0], sm.input.classes)
else:
    merge_token_tables(sm.input.shards, sm.output[0], sm.input.classes)
