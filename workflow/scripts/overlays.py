"""Rule `overlays`: heat map + predicted / GT boxes for the first test.n_vis images of a CAM cache."""

from pathlib import Path

from genpromp.cams.overlay import write_overlays
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
write_overlays(Path(sm.input.cams).parent, sm.input.index, sm.params.root, Path(sm.output[0]), sm.params.n_vis,
               sm.params.cam_thr, frame=sm.params.frame)
