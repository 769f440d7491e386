"""What a config asks each workflow stage to read: the logic behind the rules' input functions.

Each function takes the validated config and the names a rule's wildcards give (dataset, run, variant,
part) and returns the paths (from :mod:`genpromp.layout`) or the values a rule declares. A function whose
answer depends on the size of an index table takes that table's path: the rule file passes the path of the
checkpoint's output, so Snakemake re-evaluates the function once the table exists. Each rule file binds
these functions to its wildcards at its top; nothing here imports Snakemake, so every function is tested
as plain Python (tests/test_plan.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from . import layout
from .errors import ConfigError, GenprompError
from .training.shards import token_shard_count

__all__ = [
    "ASSETS", "ASSETS_TOKENIZER", "ASSETS_SYNSETS", "index_tokenizer", "classifier_scores", "scores_source",
    "token_shards", "runs_of_method", "run_pattern", "comparison_runs", "comparison_indexes", "comparison_variant", "run_tokens", "tokens_key", "tokens_for_key", "tokens_input", "run_embeddings", "run_unet_dir", "run_unet_marker", "pretrained_marker",
    "variant_scores", "embeddings_scores", "count_rows", "cam_shard_files", "LATENT_TEST_KEYS", "latent_view", "eval_parts", "part_shards",
    "part_cam_files", "eval_part_files", "eval_meta", "heldout_summary", "baseline_summaries", "calibration_files",
    "per_image_files", "baseline_per_images", "tables_params",
]

ASSETS = "resources/assets"
ASSETS_TOKENIZER = f"{ASSETS}/clip_tokenizer/vocab.json"
ASSETS_SYNSETS = f"{ASSETS}/LOC_synset_mapping.txt"
TOKENIZER_FILES = ("vocab.json", "merges.txt")


# ---------------------------------------------------------------- data
def index_tokenizer(config):
    """The CLIP tokenizer the index picks meta tokens with: a real SD folder's own tokenizer/ (no download,
    so an offline node can index), else the one rule `assets` builds (the demo model is built from that one,
    so demo runs always use it)."""
    own = Path(config["pretrained"]) / "tokenizer"
    if not config["demo"]["enabled"] and all((own / name).is_file() for name in TOKENIZER_FILES):
        return f"{own.as_posix()}/vocab.json"
    return ASSETS_TOKENIZER


def classifier_scores(config, dataset):
    """The dataset's imported classifier scores, or [] without a classifier."""
    classifier = config["datasets"][dataset].get("classifier")
    return layout.scores(dataset, classifier["name"]) if classifier else []


def scores_source(config, dataset, classifier):
    """The score file (JSON or CSV) the config names for ``classifier``."""
    entry = config["datasets"][dataset].get("classifier")
    if not entry or entry["name"] != classifier:
        raise ConfigError(f"dataset {dataset} has no classifier named {classifier} (config key "
                          f"datasets.{dataset}.classifier)")
    return entry["path"]


# ---------------------------------------------------------------- tokens, unet
def token_shards(config, dataset, classes_table):
    """Shard token tables of a dataset: train_token.shards capped at the kept classes of its class table."""
    n_shards = token_shard_count(classes_table, config["train_token"]["shards"])
    return [layout.token_shard(dataset, k) for k in range(n_shards)]


def pretrained_marker(config):
    """The file that stands for the whole pretrained model folder."""
    return f"{config['pretrained']}/unet/config.json"


# ---------------------------------------------------------------- cams
def runs_of_method(config, method):
    """The runs whose ``method`` is ``method`` (genpromp | cam), in config order."""
    return [run for run, spec in config["runs"].items() if spec.get("method", "genpromp") == method]


def run_pattern(config, method):
    """The ``{run}`` wildcard constraint of the rules that produce ``method``'s CAMs: its runs' names, or a
    pattern that matches nothing when the config has none (so exactly one rule writes each run's caches)."""
    runs = runs_of_method(config, method)
    return "|".join(runs) if runs else "(?!)"


def run_tokens(config, dataset, run):
    """What a run's embeddings get as tokens: 'meta', or a token table / original tokens/ folder."""
    tokens = config["runs"][run]["tokens"]
    return layout.tokens(dataset) if tokens == "trained" else tokens


def tokens_key(config, run):
    """The name of a run's token source (layout.TOKENS_KEY_PATTERN): 'trained', 'meta', or 'given-<hash of the
    path>'. Runs with the same key share their class embeddings."""
    tokens = config["runs"][run]["tokens"]
    if tokens in ("trained", "meta"):
        return tokens
    return "given-" + hashlib.sha256(str(tokens).encode()).hexdigest()[:12]


def tokens_for_key(config, dataset, key):
    """What the embeddings of token source ``key`` get as tokens (the inverse of :func:`tokens_key`)."""
    for run in config["runs"]:
        if tokens_key(config, run) == key:
            return run_tokens(config, dataset, run)
    raise ConfigError(f"no run in the config's runs uses the token source {key!r}")


def tokens_input(config, dataset, key):
    tokens = tokens_for_key(config, dataset, key)
    return [] if tokens == "meta" else tokens


def run_embeddings(config, dataset, run):
    """The class embeddings a run's CAM extraction reads (shared by the runs with the same tokens)."""
    return layout.embeddings(dataset, tokens_key(config, run))


def run_unet_dir(config, dataset, run):
    """The run's UNet folder, or None for the pretrained model's own unet/."""
    unet = config["runs"][run]["unet"]
    if unet == "finetuned":
        return layout.unet_dir(dataset)
    return None if unet == "pretrained" else unet


def run_unet_marker(config, dataset, run):
    folder = run_unet_dir(config, dataset, run)
    return pretrained_marker(config) if folder is None else f"{folder}/config.json"


def variant_scores(config, dataset, variant):
    """Classifier scores for a top1/top5 variant (the classes it localizes); [] for gtk."""
    if not layout.Variant.parse(variant).needs_scores:
        return []
    scores = classifier_scores(config, dataset)
    if not scores:
        raise ConfigError(f"variant {variant} needs classifier scores; config key datasets.{dataset}.classifier "
                          "is not set")
    return scores


def embeddings_scores(config, dataset):
    """The classifier scores when a main variant localizes predicted classes (top1/top5): the run's
    embeddings then also cover the predicted classes outside keep_class."""
    if set(config["test"]["eval_modes"]) <= {"gtk"}:
        return []
    return classifier_scores(config, dataset)


def count_rows(table):
    """Rows of a parquet table (read from its footer)."""
    return pq.ParquetFile(table).metadata.num_rows


def cam_shard_files(config, dataset, run, variant, index_table, split="test"):
    """Every shard file of a CAM cache over the images of ``index_table``."""
    return layout.cam_shards(dataset, run, variant, count_rows(index_table), config["test"]["shard_size"], split)


# test.* keys a latent shard depends on: the image side, the encoding batch, the images per shard and the
# VAE's precision (mode, ratios, timesteps and the run do not enter: the VAE is frozen in both stages).
LATENT_TEST_KEYS = ("resolution", "batch_size", "shard_size", "inference_precision")


def latent_view(config):
    """What rule encode_latents reads, and all its latents depend on besides the index and the images: the
    pretrained folder (its VAE), the seed and LATENT_TEST_KEYS. Passed as the rule's param, so a change of
    anything else (variants, runs, thresholds) leaves the latent cache as it is."""
    return {"pretrained": config["pretrained"], "seed": config["seed"],
            "test": {k: config["test"][k] for k in LATENT_TEST_KEYS}}


# ---------------------------------------------------------------- evaluate
def eval_parts(config, test_table):
    """CAM shard numbers of each evaluation part (a list of lists): evaluation.shard_size images rounded to
    whole CAM shards of test.shard_size."""
    from .evaluation.evaluate import eval_part_shards

    return eval_part_shards(count_rows(test_table), config["test"]["shard_size"], config["evaluation"]["shard_size"])


def part_shards(config, dataset, part, test_table):
    parts = eval_parts(config, test_table)
    if int(part) >= len(parts):
        raise GenprompError(f"evaluation part {part} does not exist for {dataset} ({len(parts)} parts)")
    return parts[int(part)]


def part_cam_files(config, dataset, run, variant, part, test_table):
    return [layout.cam_shard(dataset, run, variant, k) for k in part_shards(config, dataset, part, test_table)]


def eval_part_files(config, dataset, run, variant, ext, test_table):
    return [layout.eval_part(dataset, run, variant, p, ext) for p in range(len(eval_parts(config, test_table)))]


def eval_meta(config, dataset, run, variant):
    """What a merged summary records about itself."""
    parsed = layout.Variant.parse(variant)
    scores = classifier_scores(config, dataset) if parsed.needs_scores else []
    return {"dataset": dataset, "run": run, "variant": variant, "mode": parsed.mode, "ratio": parsed.ratio,
            "cams": layout.cam_dir(dataset, run, variant), "scores": scores or None}


# ---------------------------------------------------------------- baselines, figures
def comparison_runs(config):
    """The side-by-side figure's columns: the CAM-baseline runs, then GenPromp's runs, in config order."""
    return runs_of_method(config, "cam") + runs_of_method(config, "genpromp")


def comparison_indexes(config, dataset, variant):
    """The CAM cache indexes the side-by-side figure of ``variant`` reads, one per run (figure order)."""
    return [layout.cam_index(dataset, run, variant) for run in comparison_runs(config)]


def comparison_variant(config):
    """The variant the side-by-side figure shows: gtk at the main ratio when evaluated, else the first mode."""
    modes = config["test"]["eval_modes"]
    return layout.Variant("gtk" if "gtk" in modes else modes[0], config["test"]["combine_ratio"],
                          config["test"]["timesteps"])


# ---------------------------------------------------------------- calibration, tables
def heldout_summary(dataset, run, variant):
    """The held-out summary that calibrates a test variant (gtk at the same ratio and timesteps)."""
    return layout.summary(dataset, run, layout.Variant.parse(variant).heldout(), split="heldout")


def baseline_summaries(eval_meta_by_path):
    """Baseline summaries of every dataset that has evaluation summaries."""
    datasets = sorted({m["dataset"] for m in eval_meta_by_path.values()})
    return [layout.baseline_summary(d, b) for d in datasets for b in layout.BASELINES]


def baseline_per_images(eval_meta_by_path):
    """The per-image tables of :func:`baseline_summaries`, in the same order."""
    datasets = sorted({m["dataset"] for m in eval_meta_by_path.values()})
    return [layout.baseline_per_image(d, b) for d in datasets for b in layout.BASELINES]


def per_image_files(eval_meta_by_path, summaries):
    """The per-image table of each of ``summaries`` (same order), from their names in ``eval_meta_by_path``."""
    return [layout.per_image(m["dataset"], m["run"], m["variant"]) for m in map(eval_meta_by_path.get, summaries)]


def tables_params(config):
    """What rule tables reads from the config besides its inputs: ``bootstrap`` (evaluation.bootstrap,
    schema defaults where the config lacks it), ``main_run`` (the first run; None without runs) and
    ``combine_ratio`` (test.combine_ratio, the sweep's reference in the paired table; None if unset)."""
    from .config import schema_default

    bootstrap = {**schema_default("evaluation.bootstrap"), **config.get("evaluation", {}).get("bootstrap", {})}
    return {"bootstrap": bootstrap, "main_run": next(iter(config.get("runs") or {}), None),
            "combine_ratio": config.get("test", {}).get("combine_ratio")}


def calibration_files(config, eval_meta_by_path, summaries):
    """calibration.json next to each of ``summaries`` when evaluation.calibration is set, else []."""
    if not config.get("evaluation", {}).get("calibration"):
        return []
    return [layout.calibration(m["dataset"], m["run"], m["variant"]) for m in map(eval_meta_by_path.get, summaries)]
