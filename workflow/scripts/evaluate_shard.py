"""Rule `evaluate_shard`: score one part (whole CAM shards) of a CAM cache on both protocols."""

import logging
from pathlib import Path

from genpromp.evaluation.evaluate import run_evaluate_part, settings_from_params
from genpromp.evaluation.pxap import mask_source_from_config
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
state = run_evaluate_part(Path(sm.input.cams).parent, sm.input.index,
                          settings_from_params(sm.params.evaluation, sm.params.cam_thr), sm.params.shards,
                          sm.output.per_image, sm.output.state, scores=sm.input.scores or None, threads=sm.threads,
                          masks=mask_source_from_config(sm.params.masks))
logging.info("part %s: CAM shards %s, %d images", sm.wildcards.part, state["shards"], state["state"]["n_images"])
