"""Rule `classifier`: train the demo classifier on the train split, write test scores (reference JSON)."""

from pathlib import Path

from genpromp.logs import script_logging
from genpromp.data.indexing import image_root_for
from genpromp.demo.classifier import train_demo_classifier

sm = script_logging(snakemake)  # noqa: F821
dataset = sm.params.dataset
train_demo_classifier(Path(sm.input.test).parent, image_root_for(dataset), dataset["layout"], sm.output[0],
                      epochs=sm.params.epochs, seed=sm.params.seed)
