"""Rule `side_by_side`: overlays of every run on the same test images, one column per run."""

from pathlib import Path

from genpromp.baselines.compare import side_by_side
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
caches = {run: Path(path).parent for run, path in zip(sm.params.runs, sm.input.cams)}
side_by_side(caches, sm.input.index, sm.params.root, sm.output[0], sm.params.n_vis, sm.params.cam_thr)
