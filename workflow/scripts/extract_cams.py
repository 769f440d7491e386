"""Snakemake script for rule `extract_cams`: one CAM cache shard of one variant."""

import logging
import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.cams.extract import extract_shard  # noqa: E402

sm = snakemake  # noqa: F821
scores = sm.input.get("scores") or None
extract_shard(sm.params.config, sm.wildcards.dataset, sm.wildcards.variant, int(sm.wildcards.shard), sm.input.index,
              sm.input.embeddings, sm.output[0], unet_path=sm.params.unet,
              scores_path=scores if isinstance(scores, str) else None)
