"""Rule `assets`: build the CLIP tokenizer folder from the open-clip-torch wheel (cached in <out>/wheels)."""

from genpromp.assets import build_assets
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
build_assets(sm.params.out, parts=["tokenizer"])
