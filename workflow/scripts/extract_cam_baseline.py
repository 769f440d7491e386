"""Rule `extract_cam_baseline`: one CAM cache shard of a CAM-baseline run (the CNN's class activation maps)."""

from genpromp.baselines.cam import extract_cam_shard
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
extract_cam_shard(sm.input.model, sm.wildcards.variant, int(sm.wildcards.shard), sm.input.index, sm.params.root,
                  sm.output[0], sm.params.shard_size, sm.params.cam_size, scores_path=sm.input.scores or None,
                  threads=sm.threads)
