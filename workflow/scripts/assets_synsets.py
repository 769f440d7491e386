"""Rule `assets_synsets`: build LOC_synset_mapping.txt from the timm wheel (cached in <out>/wheels)."""

from genpromp.assets import build_assets
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
build_assets(sm.params.out, parts=["synsets"])
