# Input functions of the evaluate and tables stages (functions only; included by common.smk).
# Needs `config`; the tables functions also need EVAL_META (common.smk or a test's Snakefile).

# ---------------------------------------------------------------- evaluate stage
import re as _eval_re

import pandas as _eval_pd

from genpromp.evaluation.evaluate import eval_part_shards as _eval_part_shards

EVAL_VARIANT_RE = _eval_re.compile(r"(?P<mode>gtk|top1|top5)_w(?P<ratio>[0-9.]+)_t(?P<ts>[0-9-]+)")


wildcard_constraints:
    part=r"[0-9]+",


# The evaluation settings the scoring rules take as params: evaluation.calibration changes no score of
# these rules, so it is left out (switching calibration on or off does not rerun the test evaluation).
EVAL_SECTION = {k: v for k, v in config.get("evaluation", {}).items() if k != "calibration"}


def _eval_scores(wildcards):
    ds = config["datasets"][wildcards.dataset]
    if wildcards.variant.startswith("gtk_") or not ds.get("classifier"):
        return []
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet"


def _eval_masks(wildcards):
    """The dataset's mask listing (datasets.<d>.masks.listing), [] without masks. A demo dataset's masks
    are written with the dataset, so its marker file stands in for the listing (which does not exist
    before the demo world has run)."""
    masks = config["datasets"][wildcards.dataset].get("masks")
    if not masks:
        return []
    markers = globals().get("data_demo_markers")
    marker = markers().get(wildcards.dataset) if markers else None
    return marker or masks["listing"]


def _eval_masks_param(wildcards):
    return config["datasets"][wildcards.dataset].get("masks")


def _baseline_scores(wildcards):
    ds = config["datasets"][wildcards.dataset]
    return f"results/{wildcards.dataset}/scores/{ds['classifier']['name']}.parquet" if ds.get("classifier") else []


def eval_parts(wildcards):
    """CAM shard numbers of each evaluation part of the dataset (list of lists); needs the index checkpoint."""
    test = checkpoints.index.get(dataset=wildcards.dataset).output.test
    n_images = _eval_pd.read_parquet(test, columns=["image_id"]).shape[0]
    return _eval_part_shards(n_images, config["test"]["shard_size"], config["evaluation"]["shard_size"])


def _part_cam_shards(wildcards):
    parts = eval_parts(wildcards)
    p = int(wildcards.part)
    if p >= len(parts):
        raise WorkflowError(f"evaluation part {p} does not exist for {wildcards.dataset} ({len(parts)} parts)")
    return parts[p]


def _part_cam_files(wildcards):
    return [f"results/{wildcards.dataset}/{wildcards.run}/cams/{wildcards.variant}/shard-{k:05d}.npz"
            for k in _part_cam_shards(wildcards)]


def _eval_part_files(kind):
    def files(wildcards):
        return [f"results/{wildcards.dataset}/{wildcards.run}/eval/{wildcards.variant}/parts/part-{p:05d}.{kind}"
                for p in range(len(eval_parts(wildcards)))]
    return files


def _eval_meta(wildcards):
    match = EVAL_VARIANT_RE.fullmatch(wildcards.variant)
    return {"dataset": wildcards.dataset, "run": wildcards.run, "variant": wildcards.variant,
            "mode": match["mode"] if match else None, "ratio": float(match["ratio"]) if match else None,
            "cams": f"results/{wildcards.dataset}/{wildcards.run}/cams/{wildcards.variant}",
            "scores": _eval_scores(wildcards) or None}


# ---------------------------------------------------------------- calibration (calibrate.smk)
def heldout_cam_shard_paths(wildcards):
    """All shard files of a held-out CAM cache; their number follows the held-out index (a checkpoint)."""
    index = checkpoints.heldout_index.get(dataset=wildcards.dataset).output[0]
    n_images = _eval_pd.read_parquet(index, columns=["image_id"]).shape[0]
    n_shards = max(1, -(-n_images // int(config["test"]["shard_size"])))
    return [f"results/{wildcards.dataset}/{wildcards.run}/heldout/cams/{wildcards.variant}/shard-{k:05d}.npz"
            for k in range(n_shards)]


def heldout_summary_for(wildcards):
    """Held-out summary that calibrates a test variant: the gtk variant of the same ratio and timesteps."""
    from genpromp.evaluation.calibration import heldout_variant

    return f"results/{wildcards.dataset}/{wildcards.run}/heldout/eval/{heldout_variant(wildcards.variant)}/summary.json"


def calibration_files(wildcards=None):
    """calibration.json of every main-variant summary (eval_summaries()) when evaluation.calibration is
    set, else []."""
    if not config.get("evaluation", {}).get("calibration"):
        return []
    return [p.removesuffix("summary.json") + "calibration.json" for p in eval_summaries()]


# ---------------------------------------------------------------- tables stage
def _baseline_summaries(wildcards=None):
    datasets = sorted({m["dataset"] for m in EVAL_META.values()})
    return [f"results/{d}/baselines/{b}/summary.json" for d in datasets for b in ("center", "full")]


