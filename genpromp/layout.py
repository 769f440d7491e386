"""Where every artefact lives, and what a CAM variant is: the one contract between the workflow and the package.

The Snakefile, every rule file, the scripts' command-line twins and the package's CLI defaults take their
paths from here; nothing else formats a ``results/`` path or parses a variant name. Every path function
returns a string relative to the working directory. A part given as a Snakemake wildcard (``"{dataset}"``,
``"{shard}"``) passes through unchanged, so the same function writes a rule's output pattern and a concrete
file name::

    >>> cam_shard("{dataset}", "{run}", "{variant}", "{shard}")
    'results/{dataset}/{run}/cams/{variant}/shard-{shard}.npz'
    >>> cam_shard("cub", "genpromp", Variant("top1", 0.6, (0, 99)), 3)
    'results/cub/genpromp/cams/top1_w0.60_t0-99/shard-00003.npz'

The tree (docs/FORMATS.md describes each file)::

    results/<dataset>/index/{train,test,classes,heldout}.parquet      index_table
    results/<dataset>/scores/<classifier>.parquet                     scores
    results/<dataset>/tokens/shard-<k>.safetensors, tokens.safetensors token_shard, tokens
    results/<dataset>/unet/ (+ unet.log.csv)                          unet_dir, unet_marker, unet_log
    results/<dataset>/embeddings/<tokens key>.safetensors             embeddings
    results/<dataset>/latents/{test,heldout}/shard-<k>.safetensors    latent_dir, latent_shard, latent_shards
    results/<dataset>/<run>[/heldout]/cams/<variant>/shard-<k>.npz    cam_dir, cam_shard, cam_index
    results/<dataset>/<run>[/heldout]/eval/<variant>/...              eval_dir, eval_part, per_image, summary
    results/<dataset>/baselines/<center|full>/summary.json            baseline_summary, baseline_per_image
    results/<dataset>/cam_baseline/{model.safetensors,scores.json}    cam_baseline_model, cam_baseline_scores
    results/<dataset>/<run>/eval/<variant>/part_peaks.json            part_peaks
    results/<dataset>/figures/<name>                                  figure
    results/tables/<name>                                             table
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

from .errors import GenprompError

__all__ = [
    "RESULTS", "MODES", "MODE_ROLES", "SPLITS", "VARIANT_PATTERN", "GTK_VARIANT_PATTERN", "TOKENS_KEY_PATTERN", "BASELINES", "TABLES", "Variant",
    "roles_for_mode", "index_dir", "index_table", "scores", "tokens_dir", "token_shard", "token_shard_log", "tokens",
    "unet_dir", "unet_marker", "unet_log", "run_dir", "embeddings", "latent_dir", "latent_shard", "latent_shards", "cam_dir", "cam_shard_name", "cam_shard",
    "cam_index", "cam_shards", "shard_count", "overlays", "eval_dir", "eval_part", "per_image", "summary",
    "calibration", "baseline_dir", "baseline_summary", "baseline_per_image", "tables_dir", "table", "demo_model_dir", "parse_results_path",
    "cam_baseline_dir", "cam_baseline_model", "cam_baseline_scores", "part_peaks", "COMPARISON_FIGURE", "figure",
]

RESULTS = "results"
# CAM modes and the class each stored map slot holds: top1 keeps the predicted class's map and the
# ground truth's (GT-known needs it); top5 keeps the five predicted classes' maps and the ground truth's.
MODE_ROLES = {
    "gtk": ("gt",),
    "top1": ("top1", "gt"),
    "top5": ("top1", "top2", "top3", "top4", "top5", "gt"),
}
MODES = tuple(MODE_ROLES)
# Index tables: the training and test images, the class table, and the held-out calibration images.
SPLITS = ("train", "test", "classes", "heldout")
# The variant wildcard's constraint: what a variant name can look like.
VARIANT_PATTERN = r"(gtk|top1|top5)_w[0-9.]+_t[0-9-]+"
# Names of a run's token source: the dataset's trained tokens, the meta words only, or a given token
# file / folder (a hash of its path).
TOKENS_KEY_PATTERN = r"trained|meta|given-[0-9a-f]{12}"
# Held-out calibration caches are gtk variants only.
GTK_VARIANT_PATTERN = r"gtk_w[0-9.]+_t[0-9-]+"
_VARIANT_RE = re.compile(r"(?P<mode>gtk|top1|top5)_w(?P<ratio>[0-9]+(?:\.[0-9]+)?)_t(?P<ts>[0-9]+(?:-[0-9]+)*)")
# Map-free baselines scored on every dataset.
BASELINES = ("center", "full")
# The files of results/tables/ (rule `tables`).
TABLES = ("main.csv", "main.md", "combine_ratio.csv", "combine_ratio.md", "combine_ratio.png",
          "threshold_curve.csv", "threshold_curve.png", "error_breakdown.csv", "error_breakdown.md",
          "pr_curve.csv", "pr_curve.png", "calibration.csv", "calibration.md", "paired.csv", "paired.md")


def roles_for_mode(mode):
    """The slot roles of ``mode`` (gtk | top1 | top5), e.g. ``('top1', 'gt')``."""
    try:
        return MODE_ROLES[mode]
    except KeyError:
        raise GenprompError(f"unknown CAM mode {mode!r}; use one of {', '.join(MODES)}") from None


@dataclass(frozen=True)
class Variant:
    """What changes the maps of a CAM cache: the mode, the combine ratio w and the timesteps.

    Its name, e.g. ``top1_w0.60_t0-99``, is the variant folder and the ``{variant}`` wildcard.
    """

    mode: str
    ratio: float
    timesteps: tuple

    def __post_init__(self):
        roles_for_mode(self.mode)
        # the name keeps two decimals, so the ratio is the one the name says
        object.__setattr__(self, "ratio", float(f"{float(self.ratio):.2f}"))
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))

    @classmethod
    def parse(cls, name):
        """``top1_w0.60_t0-99`` → Variant('top1', 0.6, (0, 99)); GenprompError for another shape."""
        if isinstance(name, Variant):
            return name
        match = _VARIANT_RE.fullmatch(str(name))
        if match is None:
            raise GenprompError(f"variant {name!r} is not <gtk|top1|top5>_w<ratio>_t<t1>-<t2>… "
                                "(e.g. top1_w0.60_t0-99)")
        return cls(match["mode"], float(match["ratio"]), tuple(int(t) for t in match["ts"].split("-")))

    @property
    def name(self):
        return f"{self.mode}_w{self.ratio:.2f}_t{'-'.join(str(t) for t in self.timesteps)}"

    @property
    def roles(self):
        """Slot roles of the maps each image stores (see MODE_ROLES)."""
        return MODE_ROLES[self.mode]

    @property
    def needs_scores(self):
        """True for top1 / top5, which localize the classifier's predicted classes."""
        return self.mode != "gtk"

    def heldout(self):
        """The held-out variant that calibrates this one: gtk at the same ratio and timesteps (both protocols
        choose thresholds on the ground-truth map, which the mode does not change)."""
        return Variant("gtk", self.ratio, self.timesteps)

    def __str__(self):
        return self.name


def _part(value, width=0):
    """A path part: a string (a name or a wildcard) passes through; an integer (numpy's too) is zero-padded
    to ``width``; a Variant gives its name."""
    if isinstance(value, Variant):
        return value.name
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{int(value):0{width}d}"
    return str(value)


def _split_root(split):
    return "" if split == "test" else f"/{split}"


# ---------------------------------------------------------------- dataset-level artefacts
def index_dir(dataset):
    return f"{RESULTS}/{_part(dataset)}/index"


def index_table(dataset, split):
    """``results/<dataset>/index/<split>.parquet``; split is one of SPLITS (or a wildcard)."""
    if split not in SPLITS and not str(split).startswith("{"):
        raise GenprompError(f"unknown index table {split!r}; use one of {', '.join(SPLITS)}")
    return f"{index_dir(dataset)}/{split}.parquet"


def scores(dataset, classifier):
    return f"{RESULTS}/{_part(dataset)}/scores/{_part(classifier)}.parquet"


def tokens_dir(dataset):
    return f"{RESULTS}/{_part(dataset)}/tokens"


def token_shard(dataset, shard):
    return f"{tokens_dir(dataset)}/shard-{_part(shard)}.safetensors"


def token_shard_log(dataset, shard):
    return f"{tokens_dir(dataset)}/shard-{_part(shard)}.log.csv"


def tokens(dataset):
    """The merged stage-1 token table of a dataset."""
    return f"{tokens_dir(dataset)}/tokens.safetensors"


def unet_dir(dataset):
    """Stage 2's finetuned UNet folder (diffusers layout)."""
    return f"{RESULTS}/{_part(dataset)}/unet"


def unet_marker(dataset):
    return f"{unet_dir(dataset)}/config.json"


def unet_log(dataset):
    return f"{unet_dir(dataset)}.log.csv"


# ---------------------------------------------------------------- run-level artefacts
def run_dir(dataset, run):
    return f"{RESULTS}/{_part(dataset)}/{_part(run)}"


def embeddings(dataset, tokens_key):
    """A dataset's class embeddings for one token source (TOKENS_KEY_PATTERN): runs with the same tokens
    share them, whatever their UNet (the UNet does not enter f_r or f_d)."""
    return f"{RESULTS}/{_part(dataset)}/embeddings/{_part(tokens_key)}.safetensors"


def latent_dir(dataset, split="test"):
    """A split's VAE latent cache: the encoded images that every CAM variant and run of the dataset reads."""
    if split not in ("test", "heldout") and not str(split).startswith("{"):
        raise GenprompError(f"no latent cache for split {split!r}; use test or heldout")
    return f"{RESULTS}/{_part(dataset)}/latents/{split}"


def latent_shard(dataset, shard, split="test"):
    """Latent shard ``shard``: the same images, in the same order, as CAM shard ``shard`` of the split."""
    return f"{latent_dir(dataset, split)}/shard-{_part(shard, 5)}.safetensors"


def latent_shards(dataset, n_images, shard_size, split="test"):
    """Every latent shard of a split of ``n_images`` images."""
    return [latent_shard(dataset, k, split) for k in range(shard_count(n_images, shard_size))]


def cam_dir(dataset, run, variant, split="test"):
    """A CAM cache folder; ``split`` 'heldout' is the calibration images' cache."""
    return f"{run_dir(dataset, run)}{_split_root(split)}/cams/{_part(variant)}"


def cam_shard_name(k):
    """File name of CAM shard ``k``: ``shard-00003.npz``."""
    return f"shard-{_part(k, 5)}.npz"


def cam_shard(dataset, run, variant, shard, split="test"):
    return f"{cam_dir(dataset, run, variant, split)}/{cam_shard_name(shard)}"


def cam_index(dataset, run, variant, split="test"):
    return f"{cam_dir(dataset, run, variant, split)}/index.parquet"


def shard_count(n_images, shard_size):
    """CAM shards of a split of ``n_images`` at ``shard_size`` images each (at least one)."""
    return max(1, -(-int(n_images) // int(shard_size)))


def cam_shards(dataset, run, variant, n_images, shard_size, split="test"):
    """Every shard file of a CAM cache over ``n_images`` images."""
    return [cam_shard(dataset, run, variant, k, split) for k in range(shard_count(n_images, shard_size))]


def overlays(dataset, run, variant):
    return f"{cam_dir(dataset, run, variant)}/overlays"


def eval_dir(dataset, run, variant, split="test"):
    return f"{run_dir(dataset, run)}{_split_root(split)}/eval/{_part(variant)}"


def eval_part(dataset, run, variant, part, ext):
    """One evaluation part: ``.../parts/part-00002.parquet`` (per-image rows) or ``.json`` (sweep state)."""
    return f"{eval_dir(dataset, run, variant)}/parts/part-{_part(part, 5)}.{ext}"


def per_image(dataset, run, variant, split="test"):
    return f"{eval_dir(dataset, run, variant, split)}/per_image.parquet"


def summary(dataset, run, variant, split="test"):
    return f"{eval_dir(dataset, run, variant, split)}/summary.json"


def calibration(dataset, run, variant):
    return f"{eval_dir(dataset, run, variant)}/calibration.json"


def baseline_dir(dataset):
    return f"{RESULTS}/{_part(dataset)}/baselines"


def baseline_summary(dataset, baseline):
    return f"{baseline_dir(dataset)}/{_part(baseline)}/summary.json"


def baseline_per_image(dataset, baseline):
    """A baseline's per-image table (the rows a CAM variant's ``per_image`` has; the tables' intervals)."""
    return f"{baseline_dir(dataset)}/{_part(baseline)}/per_image.parquet"


def cam_baseline_dir(dataset):
    """The discriminative CAM baseline of a dataset (runs with method cam): its CNN and its test scores."""
    return f"{RESULTS}/{_part(dataset)}/cam_baseline"


def cam_baseline_model(dataset):
    return f"{cam_baseline_dir(dataset)}/model.safetensors"


def cam_baseline_scores(dataset):
    """The CAM baseline's test class probabilities in the classifier JSON format (a config can name the file
    as ``datasets.<d>.classifier.path``)."""
    return f"{cam_baseline_dir(dataset)}/scores.json"


def part_peaks(dataset, run, variant):
    """Where a variant's ground-truth maps peak relative to the object's part and box (part-world datasets)."""
    return f"{eval_dir(dataset, run, variant)}/part_peaks.json"


# The overlays of every run side by side on the same test images.
COMPARISON_FIGURE = "runs_side_by_side.png"


def figure(dataset, name):
    """A figure of one dataset: ``results/<dataset>/figures/<name>``."""
    return f"{RESULTS}/{_part(dataset)}/figures/{_part(name)}"


# ---------------------------------------------------------------- workflow-level artefacts
def tables_dir():
    return f"{RESULTS}/tables"


def table(name):
    return f"{tables_dir()}/{name}"


def demo_model_dir():
    """Pretraining outputs of the demo's tiny model (loss, samples, diagnostic)."""
    return f"{RESULTS}/demo_model"


def parse_results_path(path):
    """Names read back from a path in this layout: {'dataset', 'run', 'variant', 'split'} as far as the path
    tells them (an index table gives the dataset; a CAM cache folder gives all four); {} for another path."""
    parts = str(path).replace("\\", "/").rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2] == "index" and parts[-1].endswith(".parquet"):
        return {"dataset": parts[-3]} if parts[-3] not in ("", ".") else {}
    if len(parts) >= 4 and parts[-2] == "cams" and _VARIANT_RE.fullmatch(parts[-1]):
        heldout = parts[-3] == "heldout"
        names = parts[:-3] if heldout else parts[:-2]
        if len(names) < 2:
            return {}
        return {"dataset": names[-2], "run": names[-1], "variant": parts[-1], "split": "heldout" if heldout else "test"}
    return {}
