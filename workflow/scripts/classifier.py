"""Rule `classifier`: train the demo classifier on the train split, write test scores (reference JSON)."""

import logging
from pathlib import Path

from genpromp.data.classifier import train_demo_classifier
from genpromp.data.indexing import image_root_for

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
dataset = snakemake.params.dataset
train_demo_classifier(Path(snakemake.input.test).parent, image_root_for(dataset), dataset["layout"],
                      snakemake.output[0], epochs=snakemake.params.epochs, seed=snakemake.params.seed)
