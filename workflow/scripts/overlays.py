"""Snakemake script for rule `overlays`: heat map + predicted / GT boxes for test.n_vis images."""

import logging
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.cams.overlay import write_overlays  # noqa: E402

sm = snakemake  # noqa: F821
write_overlays(Path(sm.input.cams).parent, sm.input.index, sm.params.root, Path(sm.output[0]),
               sm.params.n_vis, sm.params.cam_thr, frame=sm.params.frame)
