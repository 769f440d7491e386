"""Rule `cam_index`: merge a variant's CAM shards into its index.parquet."""

import logging

from genpromp.cams.cache import write_cam_index
from genpromp.layout import Variant
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
rows = write_cam_index(list(sm.input), sm.output[0], Variant.parse(sm.wildcards.variant).roles)
logging.info("%d index rows from %d shards -> %s", rows, len(sm.input), sm.output[0])
