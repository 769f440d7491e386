"""Rule `demo_world`: generate the demo datasets (real CUB / ILSVRC layouts) and the corpus."""

import logging

from genpromp.data.synth import write_demo_world

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
write_demo_world(snakemake.params.config, snakemake.input.synsets)
