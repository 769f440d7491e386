"""Rule `train_cam_baseline`: train the discriminative CAM baseline's CNN on the train split (class labels
only); write the model and the test split's class scores (classifier JSON)."""

from pathlib import Path

from genpromp.baselines.cam import settings_from_config, train_cam_baseline
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
settings = settings_from_config({"cam_baseline": sm.params.settings}, threads=sm.threads)
train_cam_baseline(Path(sm.input.test).parent, sm.params.root, sm.output.model, sm.output.scores, settings,
                   seed=sm.params.seed)
