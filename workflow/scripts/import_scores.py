"""Rule `import_scores`: classifier scores (original JSON / CSV) -> results/<dataset>/scores/<classifier>.parquet."""

import logging
from pathlib import Path

from genpromp.data.scores import import_scores

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
import_scores(snakemake.input.scores, Path(snakemake.input.test).parent, snakemake.output[0],
              snakemake.params.format)
