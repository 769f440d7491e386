"""Rule `evaluate_baselines`: score the map-free centre-Gaussian and full-image baselines of a dataset."""

from pathlib import Path

from genpromp.evaluation.evaluate import run_baselines, settings_from_params
from genpromp.evaluation.pxap import mask_source_from_config
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
run_baselines(sm.input.index, settings_from_params(sm.params.evaluation, sm.params.cam_thr),
              Path(sm.output.center).parent.parent, scores=sm.input.scores or None,
              meta={"dataset": sm.wildcards.dataset}, masks=mask_source_from_config(sm.params.masks))
