"""Rule `tables`: paper tables and figures from the evaluation summaries."""

from pathlib import Path

from genpromp.evaluation.tables import write_tables
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
write_tables(Path(sm.output.main_csv).parent, list(sm.input.summaries), list(sm.input.ablation),
             list(sm.input.baselines), meta={str(k): v for k, v in dict(sm.params.meta).items()},
             calibration_paths=list(sm.input.calibrations))
