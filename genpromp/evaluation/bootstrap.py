"""Bootstrap confidence intervals of the evaluation figures, from the per-image tables.

The test images are resampled with replacement: resample b draws N image positions (``resample_indices``,
a [B, N] matrix from a seeded generator), every figure is recomputed on the drawn images, and the interval
is the pair of percentiles (1 − level)/2 and (1 + level)/2 of the B recomputed values (percentile method,
numpy's linear interpolation). A figure is a reduction of per-image hits: a plain mean for GT-known /
Top-1 / Top-5 Loc and classification accuracy, and for MaxBoxAcc(V2) the maximum over τ of the mean hits
at each τ (then the mean over δ), so τ is re-chosen in every resample. All resamples are computed at once:
the count of each image in each resample times the hit matrix (``resample_means``).

A paired difference applies the same index matrix to two tables aligned on their common images.
PxAP has no interval: it pools pixel counts over all images and the per-image tables keep no pixel counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from ..config import schema_default
from ..errors import ConfigError, InputError

__all__ = ["BootstrapSettings", "bootstrap_settings", "resample_indices", "resample_means", "percentile_interval",
           "POINT_METRICS", "MetricBlock", "read_per_image", "metric_blocks", "bootstrap_blocks", "intervals",
           "paired_differences", "align_common"]

# Per-image boolean columns whose mean is a figure of the tables.
POINT_METRICS = ("gt_known", "top1_loc", "top5_loc", "cls1", "cls5")
# MaxBoxAcc (largest contour) is read at this IoU threshold, as Choe et al. report it.
MAX_BOX_ACC_DELTA = 0.5
# Resamples turned into image counts per matrix product (memory: this x N floats).
_CHUNK = 64


@dataclass(frozen=True)
class BootstrapSettings:
    """B resamples, the generator's seed, and the interval's coverage (``evaluation.bootstrap``)."""

    samples: int
    seed: int
    level: float


def bootstrap_settings(bootstrap=None):
    """BootstrapSettings from the config's ``evaluation.bootstrap`` dict; missing keys take the schema's
    defaults. ConfigError for fewer than one resample or a level outside (0, 1)."""
    bootstrap = {**schema_default("evaluation.bootstrap"), **(bootstrap or {})}
    out = BootstrapSettings(samples=int(bootstrap["samples"]), seed=int(bootstrap["seed"]),
                            level=float(bootstrap["level"]))
    if out.samples < 1 or not 0.0 < out.level < 1.0:
        raise ConfigError(f"config key evaluation.bootstrap: samples must be ≥ 1 and level in (0, 1) "
                          f"(got samples={out.samples}, level={out.level})")
    return out


def resample_indices(n, samples, seed):
    """[samples, n] int32: row b holds the n image positions (drawn with replacement) of resample b."""
    if int(n) < 1:
        raise ValueError("cannot resample an empty image set")
    return np.random.default_rng(int(seed)).integers(0, int(n), size=(int(samples), int(n)), dtype=np.int32)


def resample_means(values, indices):
    """Mean (%) of every column of ``values`` [N, K] in every resample of ``indices`` [B, N]: [B, K].

    Computed as ``count of each image in the resample @ values`` (×100 / N); with 0/1 values the sums are
    exact integers, so a column's figure is what ``hits * 100 / N`` gives on the drawn images."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    out = np.empty((indices.shape[0], values.shape[1]), dtype=np.float64)
    for start in range(0, indices.shape[0], _CHUNK):
        rows = indices[start:start + _CHUNK]
        flat = (np.arange(len(rows))[:, None] * n + rows).ravel()
        counts = np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n)
        out[start:start + len(rows)] = counts.astype(np.float64) @ values
    return out * 100.0 / n


def percentile_interval(stats, level):
    """(lo, hi) of bootstrap values [B, ...] along axis 0: their (1 − level)/2 and (1 + level)/2 percentiles."""
    lo, hi = np.percentile(np.asarray(stats, dtype=np.float64), [50.0 * (1 - level), 50.0 * (1 + level)], axis=0)
    return lo, hi


@dataclass
class MetricBlock:
    """Per-image hits [N, K] (0/1) of one figure and how the K column means (%) reduce to it: ``"mean"``
    (K = 1, the figure is the mean), ``"curve"`` (one figure per column), ``"max"`` (max over the K
    thresholds) or ``"max_mean"`` (hits laid out δ-major as [N, D·T]: max over τ per δ, then the mean)."""

    hits: np.ndarray
    reduce: str
    n_deltas: int = 1

    def figure(self, means):
        """The figure(s) of column means [..., K]."""
        if self.reduce == "mean":
            return means[..., 0]
        if self.reduce == "curve":
            return means
        if self.reduce == "max":
            return means.max(axis=-1)
        per_delta = means.reshape(*means.shape[:-1], self.n_deltas, -1).max(axis=-1)
        return per_delta.mean(axis=-1)


def read_per_image(path):
    """A per-image table (docs/FORMATS.md) as a DataFrame; InputError when it is unreadable or lacks
    ``image_id``."""
    try:
        df = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read per-image table ({exc}); re-run the evaluation") from exc
    if "image_id" not in df.columns:
        raise InputError(path, "per-image table lacks column 'image_id'; re-run the evaluation")
    return df


def _iou_stack(df, column):
    """[N, T] float64 IoUs of a list column; None when the column is absent or empty (protocol not run)."""
    if column not in df.columns or len(df) == 0 or any(v is None or len(v) == 0 for v in df[column]):
        return None
    return np.stack([np.asarray(v, dtype=np.float64) for v in df[column]])


def metric_blocks(df, iou_thresholds=()):
    """The figures a per-image table supports, as {name: MetricBlock}: ``POINT_METRICS`` without missing
    values; ``max_box_acc_v2`` (all δ of ``iou_thresholds``) and ``max_box_acc`` (largest contour, δ = 0.5
    when listed) from the wsol IoUs; ``curve_gt_known`` / ``curve_top1_loc`` per TS-CAM curve threshold."""
    blocks = {}
    for name in POINT_METRICS:
        if name in df.columns and len(df) and not df[name].isna().any():
            blocks[name] = MetricBlock(df[name].to_numpy(dtype=bool)[:, None].astype(np.float64), "mean")
    deltas = [float(d) for d in iou_thresholds]
    v2 = _iou_stack(df, "wsol_v2_ious")
    if v2 is not None and deltas:
        blocks["max_box_acc_v2"] = MetricBlock(np.concatenate([v2 >= d for d in deltas], axis=1).astype(np.float64),
                                               "max_mean", len(deltas))
    v1 = _iou_stack(df, "wsol_v1_ious")
    if v1 is not None and MAX_BOX_ACC_DELTA in deltas:
        blocks["max_box_acc"] = MetricBlock((v1 >= MAX_BOX_ACC_DELTA).astype(np.float64), "max")
    ts = _iou_stack(df, "tscam_ious")
    if ts is not None:
        blocks["curve_gt_known"] = MetricBlock((ts >= 0.5).astype(np.float64), "curve")
        if "cls1" in blocks:
            blocks["curve_top1_loc"] = MetricBlock(((ts > 0.5) & df["cls1"].to_numpy(dtype=bool)[:, None])
                                                   .astype(np.float64), "curve")
    return blocks


def bootstrap_blocks(blocks, indices):
    """{name: (figure on all images, figures of the B resamples)} of ``metric_blocks`` output, from one
    matrix product over all blocks."""
    names = list(blocks)
    if not names:
        return {}
    matrix = np.concatenate([blocks[k].hits for k in names], axis=1)
    means = resample_means(matrix, indices)
    full = matrix.sum(axis=0) * 100.0 / matrix.shape[0]
    out, start = {}, 0
    for k in names:
        stop = start + blocks[k].hits.shape[1]
        out[k] = (blocks[k].figure(full[start:stop]), blocks[k].figure(means[:, start:stop]))
        start = stop
    return out


def intervals(boot, level):
    """{name: (figure, lo, hi)} of ``bootstrap_blocks`` output."""
    return {k: (point, *percentile_interval(stats, level)) for k, (point, stats) in boot.items()}


def align_common(df_a, df_b):
    """The rows of two per-image tables for their common image ids, in ``df_a``'s order: (a, b)."""
    common = df_a["image_id"].isin(set(df_b["image_id"]))
    a = df_a[common].reset_index(drop=True)
    b = df_b.set_index("image_id", drop=False).loc[a["image_id"]].reset_index(drop=True)
    return a, b


def paired_differences(blocks_a, blocks_b, indices, level, names):
    """{name: (a, b, a − b, lo, hi)} for the ``names`` both sides support: the figures of two aligned
    tables and the percentile interval of their difference over the same resamples ``indices``."""
    shared = [k for k in names if k in blocks_a and k in blocks_b]
    boot_a = bootstrap_blocks({k: blocks_a[k] for k in shared}, indices)
    boot_b = bootstrap_blocks({k: blocks_b[k] for k in shared}, indices)
    out = {}
    for k in shared:
        (pa, sa), (pb, sb) = boot_a[k], boot_b[k]
        lo, hi = percentile_interval(sa - sb, level)
        out[k] = (float(pa), float(pb), float(pa - pb), float(lo), float(hi))
    return out
