"""Rule `tables`: paper tables and figures from the evaluation summaries and their per-image tables."""

from pathlib import Path

from genpromp.evaluation.tables import write_tables
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
per_image = {**dict(zip(map(str, sm.input.summaries), map(str, sm.input.per_image))),
             **dict(zip(map(str, sm.input.ablation), map(str, sm.input.ablation_per_image))),
             **dict(zip(map(str, sm.input.baselines), map(str, sm.input.baseline_per_image)))}
params = dict(sm.params.tables)
write_tables(Path(sm.output.main_csv).parent, list(sm.input.summaries), list(sm.input.ablation),
             list(sm.input.baselines), meta={str(k): v for k, v in dict(sm.params.meta).items()},
             calibration_paths=list(sm.input.calibrations), per_image=per_image, bootstrap=dict(params["bootstrap"]),
             main_run=params["main_run"], combine_ratio=params["combine_ratio"])
