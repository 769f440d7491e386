"""Rule `heldout_cam_index`: merge a held-out CAM cache's shards into its index.parquet."""

import logging

from genpromp.cams.cache import write_cam_index
from genpromp.layout import Variant
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
rows = write_cam_index(list(sm.input), sm.output[0], Variant.parse(sm.wildcards.variant).roles)
logging.info("%d held-out index rows from %d shards -> %s", rows, len(sm.input), sm.output[0])
