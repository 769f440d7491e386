"""Snakemake script for rule `cam_index`: merge a variant's shards into index.parquet."""

import logging
import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.cams.cache import roles_for_mode, write_cam_index  # noqa: E402
from genpromp.cams.extract import parse_variant  # noqa: E402

sm = snakemake  # noqa: F821
mode, _, _ = parse_variant(sm.wildcards.variant)
rows = write_cam_index(list(sm.input), sm.output[0], roles_for_mode(mode))
logging.info("%d index rows from %d shards -> %s", rows, len(sm.input), sm.output[0])
