"""The part of the config each workflow stage depends on.

A rule passes its stage's view of the config as a param, so that Snakemake's params rerun trigger reruns
exactly the stages whose settings changed and nothing upstream of them. The views leave out what a stage
does not read: where losses are logged (``compute.tracker``), the dataset keys that only matter once CAMs
exist, and the ``test`` keys that do not change the maps.
"""

from __future__ import annotations

__all__ = ["TRACKING_KEYS", "EVAL_ONLY_DATASET_KEYS", "MAP_NEUTRAL_TEST_KEYS", "dataset_view", "stage_view",
           "evaluation_view", "with_tracking"]

# compute.* keys that only say where losses are logged: switching a tracker on or off reruns nothing.
TRACKING_KEYS = ("tracker", "tracking_dir")
# Keys of a dataset entry that only matter after CAMs exist: changing them reruns evaluation only.
EVAL_ONLY_DATASET_KEYS = ("cam_thr", "method", "masks")
# test.* keys that do not change the maps (a variant's name carries the mode and the ratio).
MAP_NEUTRAL_TEST_KEYS = ("n_vis", "combine_ratios", "combine_ratio", "eval_modes")


def dataset_view(config, dataset, drop=EVAL_ONLY_DATASET_KEYS):
    """The dataset's config entry without the keys in ``drop``."""
    return {k: v for k, v in config["datasets"][dataset].items() if k not in drop}


def stage_view(config, dataset, *sections):
    """Global keys (seed, pretrained, compute without tracking, demo), the dataset's entry and ``sections``."""
    view = {"seed": config["seed"], "pretrained": config["pretrained"],
            "compute": {k: v for k, v in config["compute"].items() if k not in TRACKING_KEYS},
            "demo": config["demo"], "datasets": {dataset: dataset_view(config, dataset)}}
    for section in sections:
        view[section] = config[section]
    if "test" in sections:
        view["test"] = {k: v for k, v in config["test"].items() if k not in MAP_NEUTRAL_TEST_KEYS}
    return view


def evaluation_view(config):
    """The evaluation settings of the scoring rules: evaluation.calibration and evaluation.bootstrap (read by
    rule tables alone) change none of their numbers."""
    return {k: v for k, v in config.get("evaluation", {}).items() if k not in ("calibration", "bootstrap")}


def with_tracking(view, config):
    """A stage view plus the full config's tracker settings (read by training jobs, kept out of params)."""
    compute = {**view["compute"], **{k: config["compute"][k] for k in TRACKING_KEYS if k in config["compute"]}}
    return {**view, "compute": compute}
