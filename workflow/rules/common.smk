# Workflow glue shared by all stages: config validation, wildcard constraints, the config-derived names
# and the target list. Paths and variant names come from genpromp.layout; each stage's file binds its own
# input functions (genpromp.plan) at its top; the logic lives in the genpromp package.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from genpromp import layout, plan
from genpromp.demo.world import demo_part_listings
from genpromp.config import validate_config
from genpromp.errors import ConfigError
from genpromp.resources import for_attempt, job_resources, job_threads, per_attempt
from genpromp.stage_params import EVAL_ONLY_DATASET_KEYS, dataset_view, evaluation_view, stage_view

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    classifier=r"[A-Za-z0-9_.-]+",
    variant=layout.VARIANT_PATTERN,
    shard=r"[0-9]+",
    part=r"[0-9]+",


DATASETS = config["datasets"]
METHOD_DATASETS = [name for name, ds in DATASETS.items() if ds["method"]]
RUNS = list(config["runs"])
MAIN_RUN = RUNS[0]
if config["runs"][MAIN_RUN]["method"] != "genpromp":
    raise WorkflowError(
        f"config key runs: the first run ({MAIN_RUN}) is the main run and gets the combine_ratios "
        "sweep; put a method genpromp run first"
    )
TEST = config["test"]
MAIN_VARIANTS = [layout.Variant(m, TEST["combine_ratio"], TEST["timesteps"]) for m in TEST["eval_modes"]]
ABLATION_VARIANTS = [layout.Variant("gtk", w, TEST["timesteps"]) for w in TEST["combine_ratios"]]
PRETRAINED_MARKER = plan.pretrained_marker(config)
EVALUATION = evaluation_view(config)

for _name in METHOD_DATASETS:
    if DATASETS[_name].get("classifier") is None and set(TEST["eval_modes"]) - {"gtk"}:
        raise WorkflowError(
            f"config key datasets.{_name}.classifier: eval modes {TEST['eval_modes']} need classifier "
            "scores; add a classifier entry or use test.eval_modes: [gtk]"
        )


def measured(rule, key):
    """Resource ``key`` (mem_mb, runtime or gpu_mem_mb) of a ``rule`` job, from the measured costs and the
    config's batch and shard sizes (genpromp.resources; the numbers are in docs/cluster.md); mem_mb and
    runtime grow with Snakemake's retry ``attempt``."""
    return lambda wildcards, attempt: job_resources(rule, config, getattr(wildcards, "dataset", None), attempt)[key]


# ---------------------------------------------------------------- targets
def index_targets():
    out = []
    for name, ds in DATASETS.items():
        out += [layout.index_table(name, split) for split in ("train", "test", "classes")]
        if ds.get("classifier"):
            out.append(plan.classifier_scores(config, name))
    return out


# {summary path: names the tables group it by}: the main variants of every method dataset and run, and
# the combine-ratio sweep (gtk mode) of the main run.
EVAL_META = {
    layout.summary(d, r, v): dict(
        dataset=d,
        run=r,
        variant=v.name,
        mode=v.mode,
        ratio=v.ratio,
        method=config["runs"][r].get("method", "genpromp"),
    )
    for d in METHOD_DATASETS
    for r, variants in [(r, MAIN_VARIANTS) for r in RUNS] + [(MAIN_RUN, ABLATION_VARIANTS)]
    for v in variants
}


def eval_summaries():
    """Summaries of the main variants: every method dataset x run x eval mode."""
    return [layout.summary(d, r, v) for d in METHOD_DATASETS for r in RUNS for v in MAIN_VARIANTS]


def ablation_summaries():
    """Summaries of the combine-ratio sweep (gtk mode, main run)."""
    return [layout.summary(d, MAIN_RUN, v) for d in METHOD_DATASETS for v in ABLATION_VARIANTS]


def overlay_targets():
    n_vis = TEST["n_vis"]
    return [layout.overlays(d, r, v) for d in METHOD_DATASETS for r in RUNS for v in MAIN_VARIANTS if n_vis > 0]


def table_targets():
    return [layout.table(name) for name in layout.TABLES] if METHOD_DATASETS else []


def baseline_targets():
    """With a CAM-baseline run (runs.<r>.method cam): the side-by-side figure of every run per method dataset,
    and on part-world demo datasets where each evaluated variant's maps peak (genpromp.baselines.peaks)."""
    if not plan.runs_of_method(config, "cam"):
        return []
    out = [layout.figure(d, layout.COMPARISON_FIGURE) for d in METHOD_DATASETS] if TEST["n_vis"] > 0 else []
    parts = demo_part_listings(config)
    return out + [
        layout.part_peaks(m["dataset"], m["run"], m["variant"]) for m in EVAL_META.values() if m["dataset"] in parts
    ]


def all_targets():
    return (
        index_targets()
        + eval_summaries()
        + ablation_summaries()
        + table_targets()
        + overlay_targets()
        + baseline_targets()
    )
