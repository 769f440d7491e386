"""Rule `merge_eval`: merge a CAM cache's evaluation parts into per_image.parquet and summary.json."""

import logging

from genpromp.evaluation.evaluate import merge_evaluation, settings_from_params
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
s = merge_evaluation(list(sm.input.parts), list(sm.input.states), sm.input.index,
                     settings_from_params(sm.params.evaluation, sm.params.cam_thr), sm.output.per_image,
                     sm.output.summary, meta=dict(sm.params.meta))
logging.info("merged %d parts, %d images: GT-known %.2f%%", len(sm.input.parts), s["n_images"], s["tscam"]["gt_known"])
if s.get("pxap"):
    logging.info("PxAP %.2f%%", s["pxap"]["pxap"])
