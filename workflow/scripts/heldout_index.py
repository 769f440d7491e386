"""Checkpoint `heldout_index`: the held-out calibration images, taken from the training index."""

import logging

from genpromp.evaluation.calibration import write_heldout_index
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
n = write_heldout_index(sm.input.train, sm.output[0], sm.params.images_per_class)
logging.info("%d held-out images (%d per class) -> %s", n, sm.params.images_per_class, sm.output[0])
