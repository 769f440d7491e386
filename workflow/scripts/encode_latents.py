"""Rule `encode_latents`: one latent shard of a split (the VAE encoding every CAM variant and run reads)."""

from genpromp.cams.latents import encode_shard
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
encode_shard(sm.params.config, int(sm.wildcards.shard), sm.input.index, sm.params.root, sm.output[0])
