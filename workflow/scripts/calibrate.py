"""Rule `calibrate`: test metrics at thresholds chosen on the held-out images."""

import logging

from genpromp.evaluation.calibration import run_calibrate
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
out = run_calibrate(sm.input.heldout, sm.input.test, sm.output[0], meta=dict(sm.params.meta))
cal = out["tscam"]["calibrated"]
if cal is not None:
    logging.info("cam_thr %.2f chosen on %d held-out images: test GT-known %.2f%% (fixed %.2f%%, oracle %.2f%%)",
                 cal["threshold"], out["n_heldout"], cal["gt_known"], out["tscam"]["fixed"]["gt_known"],
                 out["tscam"]["oracle"]["gt_known"])
