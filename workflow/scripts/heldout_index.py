"""Snakemake script for checkpoint `heldout_index`: the held-out calibration images from the training index."""

import logging
import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.evaluation.calibration import write_heldout_index  # noqa: E402

sm = snakemake  # noqa: F821
n = write_heldout_index(sm.input.train, sm.output[0], sm.params.images_per_class)
logging.info("%d held-out images (%d per class) -> %s", n, sm.params.images_per_class, sm.output[0])
