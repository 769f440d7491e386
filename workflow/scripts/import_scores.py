"""Rule `import_scores`: a classifier's scores (original JSON / CSV) -> the dataset's scores parquet."""

from pathlib import Path

from genpromp.data.scores import import_scores
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
import_scores(sm.input.scores, Path(sm.input.test).parent, sm.output[0], sm.params.format)
