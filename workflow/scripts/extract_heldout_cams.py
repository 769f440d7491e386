"""Rule `extract_heldout_cams`: one CAM cache shard of the held-out calibration images (gtk variants),
from the held-out split's cached latents."""

from genpromp.cams.extract import extract_shard
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
extract_shard(sm.params.config, sm.wildcards.variant, int(sm.wildcards.shard), sm.input.index, sm.params.root,
              sm.input.embeddings, sm.output[0], unet_path=sm.params.unet, latents_path=sm.input.latents)
