"""Snakemake script for rule `embeddings`: f_r and f_d of the classes CAM extraction needs, for one run."""

import logging
import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.cams.embeddings import build_run_embeddings  # noqa: E402

sm = snakemake  # noqa: F821
build_run_embeddings(sm.params.pretrained, sm.input.classes, sm.params.tokens, sm.output[0],
                     test_index=sm.input.test_index, scores=sm.input.scores or None)
