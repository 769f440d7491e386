"""Rule `demo_world`: generate the demo datasets (real CUB / ILSVRC layouts) and the corpus."""

from genpromp.logs import script_logging
from genpromp.demo.world import write_demo_world

sm = script_logging(snakemake)  # noqa: F821
write_demo_world(sm.params.config, sm.input.synsets)
