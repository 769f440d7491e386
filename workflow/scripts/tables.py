"""Snakemake script for rule `tables`: paper tables and figures from evaluation summaries."""

import logging
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.evaluation.tables import write_tables  # noqa: E402

sm = snakemake  # noqa: F821
write_tables(Path(sm.output.main_csv).parent, list(sm.input.summaries), list(sm.input.ablation),
             list(sm.input.baselines), meta={str(k): v for k, v in dict(sm.params.meta).items()},
             calibration_paths=list(sm.input.calibrations))
