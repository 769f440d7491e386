"""Rule `embeddings`: f_r and f_d of the classes CAM extraction needs, for one run."""

from genpromp.cams.embeddings import build_run_embeddings
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
build_run_embeddings(sm.params.pretrained, sm.input.classes, sm.params.tokens, sm.output[0],
                     test_index=sm.input.test_index, scores=sm.input.scores or None)
