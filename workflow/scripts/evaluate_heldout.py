"""Rule `evaluate_heldout`: score the held-out calibration images' CAM cache (one job)."""

import logging
from pathlib import Path

from genpromp.evaluation.evaluate import run_evaluate, settings_from_params
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
s = run_evaluate(Path(sm.input.cams).parent, sm.input.index, settings_from_params(sm.params.evaluation, sm.params.cam_thr),
                 sm.output.per_image, sm.output.summary, threads=sm.threads, meta=dict(sm.params.meta))
logging.info("held-out: %d images, GT-known %.2f%% at cam_thr", s["n_images"], s["tscam"]["gt_known"])
