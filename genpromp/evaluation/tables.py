"""Paper tables from evaluation summaries: CSV + Markdown (+ PNG figures via ``plots``).

Every function takes summary JSON paths and a metadata dict ``{path: {dataset, run, variant, mode,
ratio}}`` (the workflow's ``EVAL_META``); missing metadata is read from the summary itself. Measured
figures carry bootstrap confidence intervals (``bootstrap``) from the per-image table of their summary:
``<metric>_lo`` / ``<metric>_hi`` columns in the CSVs, ``value [lo, hi]`` cells in the Markdown.
CLI: ``genpromp tables``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layout
from ..errors import InputError
from ..io import atomic_path, write_text_atomic
from .bootstrap import (
    MAX_BOX_ACC_DELTA, align_common, bootstrap_blocks, bootstrap_settings, intervals, metric_blocks,
    paired_differences, read_per_image, resample_indices,
)
from .metrics import ERROR_CATEGORIES
from .plots import plot_combine_ratio, plot_pr_curve, plot_threshold_curve

__all__ = [
    "PAPER_NUMBERS", "load_summary", "main_table", "combine_ratio_table", "threshold_curve_table",
    "pr_curve_table", "error_breakdown_table", "calibration_table", "paired_table", "Intervals", "to_markdown",
    "write_tables", "register_cli",
]
log = logging.getLogger(__name__)

# Published Top-1 / Top-5 / GT-known Loc (%) (the GenPromp paper's comparison table).
PAPER_NUMBERS = {
    "TS-CAM (DeiT-S)": {"CUB": (71.3, 83.8, 87.7), "ImageNet": (53.4, 64.3, 67.6)},
    "BAS (ResNet50)": {"CUB": (77.3, 90.1, 95.1), "ImageNet": (57.2, 67.4, 71.8)},
    "C²AM (DenseNet161 + EffNet-B7 cls)": {"CUB": (81.8, 91.1, 92.9), "ImageNet": (59.6, 67.1, 68.5)},
    "GenPromp (SD-1.4 + EffNet-B7 cls)": {"CUB": (87.0, 96.1, 98.0), "ImageNet": (65.2, 73.4, 75.0)},
}
# Centre-Gaussian baseline MaxBoxAccV2 (%) as published by Choe et al. (CVPR'20).
PAPER_CENTER_V2 = {"CUB": 59.7, "ImageNet": 52.5}


def paper_family(dataset):
    """'CUB' or 'ImageNet' for a dataset name (by its name; None if neither)."""
    name = dataset.lower()
    return "CUB" if "cub" in name else "ImageNet" if ("imagenet" in name or "ilsvrc" in name) else None


def load_summary(path, meta=None):
    """Read a summary JSON and merge the metadata (meta wins); raise InputError if unreadable."""
    try:
        s = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read evaluation summary ({exc}); re-run `genpromp evaluate`") from exc
    m = dict((meta or {}).get(str(path), {}))
    for key in ("dataset", "run", "variant", "mode", "ratio", "baseline"):
        m.setdefault(key, s.get(key))
    if m.get("dataset") is None:
        raise InputError(path, "summary has no dataset and none was given in the metadata")
    return s, m


def _v2(s):
    return s.get("wsol", {}).get("v2", {}).get("mean")


def _pxap(s):
    """PxAP (%) of a summary; None when it was evaluated without masks."""
    return (s.get("pxap") or {}).get("pxap")


# The per-image table beside a summary (where the workflow and `genpromp evaluate` callers put it).
PER_IMAGE_NAME = "per_image.parquet"
# Main-table figures with intervals, in column order (PxAP, which has none, follows max_box_acc_v2).
MAIN_METRICS = ("top1_loc", "top5_loc", "gt_known", "max_box_acc_v2")
EXTRA_METRICS = ("max_box_acc", "cls1", "cls5")


def _ci_columns(names):
    return [c for k in names for c in (k, f"{k}_lo", f"{k}_hi")]


# The main table's method column per run method (runs.<run>.method).
METHOD_LABELS = {"genpromp": "GenPromp (ours)", "cam": "CAM (Zhou et al. 2016)"}
MAIN_COLUMNS = ["source", "dataset", "run", "variant", "method", *_ci_columns(MAIN_METRICS), "pxap",
                *_ci_columns(EXTRA_METRICS), "n_images"]


def summary_figures(s):
    """The single-number figures (%) of a summary by column name; None where it has none."""
    ts = s["tscam"]
    v1 = ((s.get("wsol") or {}).get("v1") or {}).get("max_box_acc") or {}
    return {"gt_known": ts["gt_known"], "top1_loc": ts.get("top1_loc"), "top5_loc": ts.get("top5_loc"),
            "cls1": ts.get("cls1"), "cls5": ts.get("cls5"), "max_box_acc_v2": _v2(s),
            "max_box_acc": v1.get(f"{MAX_BOX_ACC_DELTA:g}")}


class Intervals:
    """Bootstrap intervals of summaries' figures, drawn from their per-image tables (``bootstrap``).

    per_image: {summary path: its per-image table}; a summary not listed uses the per_image.parquet beside
    it when there is one, else it gets no intervals (a warning). bootstrap: the config's
    ``evaluation.bootstrap`` dict (schema defaults for missing keys). Every table of one ``write_tables``
    call draws its resamples from one index matrix per image count, so paired and unpaired intervals of the
    same images use the same resamples."""

    def __init__(self, per_image=None, bootstrap=None):
        self.per_image = {str(k): Path(v) for k, v in (per_image or {}).items()}
        self.settings = bootstrap_settings(bootstrap)
        self._indices, self._cis = {}, {}

    def indices(self, n):
        """The [B, n] resample index matrix (one per n, from the configured seed)."""
        if n not in self._indices:
            self._indices[n] = resample_indices(n, self.settings.samples, self.settings.seed)
        return self._indices[n]

    def frame(self, summary_path, summary):
        """The per-image DataFrame of a summary, or None when it has none."""
        path = self.per_image.get(str(summary_path))
        if path is None:
            path = Path(summary_path).with_name(PER_IMAGE_NAME)
            if not path.is_file():
                log.warning("%s: no per-image table beside it; its figures get no confidence interval", summary_path)
                return None
        df = read_per_image(path)
        if len(df) != summary["n_images"]:
            raise InputError(path, f"{len(df)} rows, but its summary {summary_path} counts {summary['n_images']} "
                                   "images; re-run the evaluation (the two files are from different runs)")
        return df

    def of(self, summary_path, summary):
        """{figure: (value, lo, hi)} of a summary's per-image table ({} without one); curve figures
        (``curve_gt_known``, ``curve_top1_loc``) hold arrays over the TS-CAM curve thresholds."""
        key = str(summary_path)
        if key not in self._cis:
            df = self.frame(summary_path, summary)
            if df is None:
                self._cis[key] = {}
            else:
                blocks = metric_blocks(df, (summary.get("wsol") or {}).get("iou_thresholds", ()))
                cis = intervals(bootstrap_blocks(blocks, self.indices(len(df))), self.settings.level)
                _check_figures(cis, summary, self.per_image.get(key, key))
                self._cis[key] = cis
        return self._cis[key]


def _check_figures(cis, summary, where):
    """InputError when a per-image table's figures differ from its summary's (stale files)."""
    for k, value in summary_figures(summary).items():
        if value is not None and k in cis and abs(float(cis[k][0]) - value) > 1e-6:
            raise InputError(where, f"{k} from the per-image table is {float(cis[k][0]):.4f} but the summary says "
                                    f"{value:.4f}; the two files are from different runs, re-run the evaluation")


def _ci_cells(name, value, cis):
    """{name: value, name_lo, name_hi}: the interval where ``cis`` has one and the value is measured."""
    lo, hi = (float(cis[name][1]), float(cis[name][2])) if value is not None and name in cis else (None, None)
    return {name: value, f"{name}_lo": lo, f"{name}_hi": hi}


def _measured_row(source, dataset, run, variant, method, s, cis):
    fig = summary_figures(s)
    row = {"source": source, "dataset": dataset, "run": run, "variant": variant, "method": method}
    for k in MAIN_METRICS:
        row.update(_ci_cells(k, fig[k], cis))
    row["pxap"] = _pxap(s)
    for k in EXTRA_METRICS:
        row.update(_ci_cells(k, fig[k], cis))
    row["n_images"] = s.get("n_images")
    return row


def main_table(paths, meta=None, baseline_paths=(), ci=None):
    """Top-1 / Top-5 / GT-known Loc, MaxBoxAccV2, PxAP (None without masks), MaxBoxAcc (δ = 0.5) and
    classification Top-1 / Top-5 accuracy per dataset and run, baselines, and paper rows. ``ci`` (an
    :class:`Intervals`; default: per-image tables beside the summaries, schema bootstrap settings) adds
    ``<metric>_lo`` / ``<metric>_hi``; PxAP has no interval (pixel-pooled)."""
    ci = ci or Intervals()
    rows, families = [], []
    for p in paths:
        s, m = load_summary(p, meta)
        method = METHOD_LABELS.get(m.get("method", "genpromp"), m.get("method"))
        rows.append(_measured_row("ours", m["dataset"], m["run"], m["variant"], method, s, ci.of(p, s)))
        families.append(paper_family(m["dataset"]))
    for p in baseline_paths:
        s, m = load_summary(p, meta)
        rows.append(_measured_row("baseline", m["dataset"], None, None, f"{m.get('baseline') or 'baseline'} box", s,
                                  ci.of(p, s)))
    for fam in dict.fromkeys(f for f in families if f):
        for method, nums in PAPER_NUMBERS.items():
            t1, t5, gk = nums[fam]
            rows.append({"source": "paper", "dataset": fam, "method": method, "top1_loc": t1, "top5_loc": t5,
                         "gt_known": gk})
        rows.append({"source": "paper", "dataset": fam, "method": "center baseline",
                     "max_box_acc_v2": PAPER_CENTER_V2[fam]})
    df = pd.DataFrame(rows, columns=MAIN_COLUMNS)
    df["n_images"] = df["n_images"].astype("Int64")
    return df


RATIO_COLUMNS = ["dataset", "run", "variant", "ratio", *_ci_columns(("gt_known", "max_box_acc_v2")), "pxap"]


def combine_ratio_table(paths, meta=None, ci=None):
    """GT-known Loc and MaxBoxAccV2 (with intervals, see :func:`main_table`) and PxAP vs combine ratio w
    (ablation variants)."""
    ci = ci or Intervals()
    rows = []
    for p in paths:
        s, m = load_summary(p, meta)
        cis = ci.of(p, s)
        rows.append({"dataset": m["dataset"], "run": m["run"], "variant": m["variant"],
                     "ratio": float(m["ratio"]) if m.get("ratio") is not None else np.nan,
                     **_ci_cells("gt_known", s["tscam"]["gt_known"], cis),
                     **_ci_cells("max_box_acc_v2", _v2(s), cis), "pxap": _pxap(s)})
    return pd.DataFrame(rows, columns=RATIO_COLUMNS).sort_values(["dataset", "run", "ratio"]).reset_index(drop=True)


def _curve_interval(cis, name, i, n_thr, where):
    """(lo, hi) of curve figure ``name`` at threshold index i, (None, None) without an interval."""
    if name not in cis:
        return None, None
    if len(cis[name][1]) != n_thr:
        raise InputError(where, f"per-image TS-CAM curve has {len(cis[name][1])} thresholds but the summary "
                                f"{n_thr}; re-run the evaluation")
    return float(cis[name][1][i]), float(cis[name][2][i])


def threshold_curve_table(paths, meta=None, ci=None):
    """Long table: GT-known and Top-1 Loc (%) per threshold for each summary (TS-CAM protocol), with
    intervals per threshold (``gt_known_lo`` … ``top1_loc_hi``, see :func:`main_table`)."""
    ci = ci or Intervals()
    rows = []
    for p in paths:
        s, m = load_summary(p, meta)
        curve = s["tscam"].get("curve", {})
        thr = s["tscam"].get("thresholds", s["thresholds"])  # TS-CAM curve thresholds (evaluation.tscam_sweep)
        cis = ci.of(p, s) if curve else {}
        for i, t in enumerate(thr):
            row = {"dataset": m["dataset"], "run": m["run"], "variant": m["variant"], "threshold": t}
            for key in ("gt_known", "top1_loc"):
                value = curve[key][i] if key in curve else None
                lo, hi = _curve_interval(cis, f"curve_{key}", i, len(thr), p) if value is not None else (None, None)
                row.update({key: value, f"{key}_lo": lo, f"{key}_hi": hi})
            rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "run", "variant", "threshold",
                                       *_ci_columns(("gt_known", "top1_loc"))])


def pr_curve_table(paths, meta=None):
    """Long table: the pixel precision–recall curve (PxAP) of each summary evaluated with masks.

    One row per threshold ("score ≥ threshold", ascending; precision empty where no pixel scores
    that high) with the summary's PxAP repeated."""
    rows = []
    for p in paths:
        s, m = load_summary(p, meta)
        px = s.get("pxap")
        if not px:
            continue
        for t, prec, rec in zip(px["thresholds"], px["precision"], px["recall"]):
            rows.append({"dataset": m["dataset"], "run": m["run"], "variant": m["variant"], "threshold": t,
                         "precision": prec, "recall": rec, "pxap": px["pxap"]})
    return pd.DataFrame(rows, columns=["dataset", "run", "variant", "threshold", "precision", "recall", "pxap"])


def error_breakdown_table(paths, meta=None):
    """Top-1 error breakdown (%) per summary that has classifier scores."""
    rows = []
    for p in paths:
        s, m = load_summary(p, meta)
        eb = s["tscam"].get("error_breakdown")
        if eb:
            rows.append({"dataset": m["dataset"], "run": m["run"], "variant": m["variant"],
                         **{c: eb[c] for c in ERROR_CATEGORIES}})
    return pd.DataFrame(rows, columns=["dataset", "run", "variant", *ERROR_CATEGORIES])


CALIBRATION_COLUMNS = ["dataset", "run", "variant", "protocol", "metric", "fixed", "calibrated", "oracle",
                       "fixed_threshold", "calibrated_threshold", "oracle_threshold", "n_heldout"]


def calibration_table(paths, meta=None):
    """Test metrics (%) at three threshold choices per calibration JSON (``genpromp.evaluation.calibration``):
    ``fixed`` (the config's cam_thr; TS-CAM protocol only), ``calibrated`` (chosen on the held-out images)
    and ``oracle`` (chosen on the test set itself), with the thresholds. Rows: GT-known / Top-1 / Top-5 Loc
    (TS-CAM), BoxAccV2 per δ and their mean, MaxBoxAccV2 (wsolevaluation)."""
    rows = []
    for p in paths:
        c, m = load_summary(p, meta)
        base = {"dataset": m["dataset"], "run": m["run"], "variant": m["variant"], "n_heldout": c["n_heldout"]}
        ts = c["tscam"]
        cal, orc = ts.get("calibrated") or {}, ts.get("oracle") or {}
        for key, name in (("gt_known", "GT-known Loc"), ("top1_loc", "Top-1 Loc"), ("top5_loc", "Top-5 Loc")):
            if ts["fixed"].get(key) is None:
                continue
            rows.append({**base, "protocol": "TS-CAM", "metric": name, "fixed": ts["fixed"][key],
                         "calibrated": cal.get(key), "oracle": orc.get(key),
                         "fixed_threshold": ts["fixed"]["threshold"], "calibrated_threshold": cal.get("threshold"),
                         "oracle_threshold": orc.get("threshold")})
        v2 = (c.get("wsol") or {}).get("v2")
        if v2:
            cal, orc = v2["calibrated"], v2["oracle"]
            for d in cal["box_acc"]:
                rows.append({**base, "protocol": "wsol", "metric": f"BoxAccV2 δ={d}", "fixed": None,
                             "calibrated": cal["box_acc"][d], "oracle": orc["box_acc"][d], "fixed_threshold": None,
                             "calibrated_threshold": cal["threshold"][d], "oracle_threshold": orc["threshold"][d]})
            rows.append({**base, "protocol": "wsol", "metric": "MaxBoxAccV2 (mean over δ)", "fixed": None,
                         "calibrated": cal["mean"], "oracle": orc["mean"], "fixed_threshold": None,
                         "calibrated_threshold": None, "oracle_threshold": None})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


PAIRED_COLUMNS = ["dataset", "comparison", "a", "a_variant", "b", "b_variant", "metric", "n_images", "a_value",
                  "b_value", "difference", "difference_lo", "difference_hi"]
# Figures compared by the paired table (each where both sides have it); the combine-ratio sweep is gtk.
PAIRED_METRICS = ("gt_known", "top1_loc", "max_box_acc_v2")
RATIO_PAIRED_METRICS = ("gt_known", "max_box_acc_v2")
PAIRED_NOTE = (
    "Paired differences a − b (percentage points) with bootstrap intervals: both sides are recomputed on "
    "the same resamples of the images they share (n_images), so the interval is that of the difference "
    "itself. **run**: the main run against every other run at the same variant (GT-known Loc, Top-1 Loc "
    "where both have it, MaxBoxAccV2); **baseline**: the main run against the centre-Gaussian box; "
    "**combine_ratio**: w = test.combine_ratio against w = 0 and w = 1 (gtk sweep; GT-known Loc and "
    "MaxBoxAccV2). An interval that excludes 0 separates the two at the configured level.\n\n")


def _side(path, meta, label):
    s, m = load_summary(path, meta)
    return {"path": path, "summary": s, "meta": m, "label": label}


def _same_ratio(a, b):
    return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9


def _comparisons(eval_paths, ablation_paths, baseline_paths, meta, main_run, combine_ratio):
    """[(comparison, side a, side b)] of the paired table (see PAIRED_NOTE)."""
    main = [_side(p, meta, None) for p in eval_paths]
    for side in main:
        side["label"] = side["meta"]["run"]
    main_run = main_run if main_run is not None else (main[0]["label"] if main else None)
    ours = [a for a in main if a["label"] == main_run]
    pairs = [("run", a, b) for a in ours for b in main
             if b["label"] != main_run and (b["meta"]["dataset"], b["meta"]["variant"]) == (a["meta"]["dataset"],
                                                                                         a["meta"]["variant"])]
    centre = [c for c in (_side(p, meta, "center box") for p in baseline_paths)
              if c["meta"].get("baseline") == "center"]
    pairs += [("baseline", a, c) for a in ours for c in centre if c["meta"]["dataset"] == a["meta"]["dataset"]]
    if combine_ratio is None and ours:
        combine_ratio = ours[0]["meta"].get("ratio")
    sweep = [_side(p, meta, None) for p in ablation_paths]
    for side in sweep:
        side["label"] = side["meta"]["run"]
    for ref in (a for a in sweep if _same_ratio(a["meta"].get("ratio"), combine_ratio)):
        for w in (0.0, 1.0):
            pairs += [("combine_ratio", ref, b) for b in sweep
                      if (b["meta"]["dataset"], b["label"]) == (ref["meta"]["dataset"], ref["label"])
                      and _same_ratio(b["meta"].get("ratio"), w) and not _same_ratio(w, combine_ratio)]
    return pairs


def _paired_rows(ci, comparison, a, b):
    """Rows of one comparison: each PAIRED_METRICS figure both per-image tables support."""
    df_a, df_b = ci.frame(a["path"], a["summary"]), ci.frame(b["path"], b["summary"])
    if df_a is None or df_b is None:
        return []
    df_a, df_b = align_common(df_a, df_b)
    if len(df_a) == 0:
        log.warning("%s and %s share no image; no paired comparison", a["path"], b["path"])
        return []
    deltas = [(side["summary"].get("wsol") or {}).get("iou_thresholds", ()) for side in (a, b)]
    metrics = RATIO_PAIRED_METRICS if comparison == "combine_ratio" else PAIRED_METRICS
    names = [k for k in metrics if k != "max_box_acc_v2" or deltas[0] == deltas[1]]
    diffs = paired_differences(metric_blocks(df_a, deltas[0]), metric_blocks(df_b, deltas[1]),
                               ci.indices(len(df_a)), ci.settings.level, names)
    base = {"dataset": a["meta"]["dataset"], "comparison": comparison, "a": a["label"],
            "a_variant": a["meta"].get("variant"), "b": b["label"], "b_variant": b["meta"].get("variant"),
            "n_images": len(df_a)}
    return [{**base, "metric": k, "a_value": va, "b_value": vb, "difference": d, "difference_lo": lo,
             "difference_hi": hi} for k, (va, vb, d, lo, hi) in diffs.items()]


def paired_table(eval_paths, ablation_paths=(), baseline_paths=(), meta=None, ci=None, main_run=None,
                 combine_ratio=None):
    """Paired bootstrap differences (see PAIRED_NOTE). main_run: the run compared with the others (default:
    the first summary's); combine_ratio: the sweep's reference w (default: the main run's ratio). Figures
    are recomputed on the images both sides share, so they can differ from main.md when the sets differ."""
    ci = ci or Intervals()
    rows = []
    for comparison, a, b in _comparisons(eval_paths, ablation_paths, baseline_paths, meta, main_run, combine_ratio):
        rows += _paired_rows(ci, comparison, a, b)
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    df["n_images"] = df["n_images"].astype("Int64")
    return df


CALIBRATION_NOTE = (
    "Test localization (%) at three threshold choices. **fixed**: the config's cam_thr (the paper's protocol; "
    "TS-CAM only). **calibrated**: the threshold that scores best on held-out labelled training images "
    "(evaluation.calibration; their boxes are unseen by training, the images were class examples), chosen per "
    "IoU threshold δ for wsolevaluation. **oracle**: the threshold that scores best on the test set itself "
    "(optimistic; MaxBoxAccV2 in main.md is this choice). Ties go to the lowest threshold.\n\n")


def _threshold_text(v):
    """A threshold as written in the config: up to 4 decimals, trailing zeros dropped (0.23, 0.1, 0)."""
    return f"{v:.4f}".rstrip("0").rstrip(".")


def _missing(v):
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _with_intervals(df, digits):
    """``df`` with each column ``c`` that has ``c_lo`` and ``c_hi`` written as text ``value [lo, hi]``
    (the value alone where there is no interval) and the ``_lo`` / ``_hi`` columns dropped."""
    out = df.copy()
    for c in [c for c in df.columns if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns]:
        out[c] = ["–" if _missing(v) else f"{v:.{digits}f}" + ("" if _missing(lo) or _missing(hi) else
                                                              f" [{lo:.{digits}f}, {hi:.{digits}f}]")
                  for v, lo, hi in zip(df[c], df[f"{c}_lo"], df[f"{c}_hi"])]
        out = out.drop(columns=[f"{c}_lo", f"{c}_hi"])
    return out


def to_markdown(df, digits=1):
    """A GitHub Markdown table; floats with ``digits`` decimals (columns named ``*threshold`` as
    thresholds: 0.23, not 0.2), missing values as '–'. A column ``c`` with ``c_lo`` and ``c_hi`` columns
    shows ``c [c_lo, c_hi]`` in one cell."""
    df = _with_intervals(df, digits)

    def fmt(v, column):
        if _missing(v):
            return "–"
        if isinstance(v, float):
            return _threshold_text(v) if column.endswith("threshold") else f"{v:.{digits}f}"
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v, c) for v, c in zip(row, df.columns)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write_csv(df, path):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _interval_note(ci):
    s = ci.settings
    return (f"Brackets: {s.level:.0%} bootstrap confidence interval ({s.samples} resamples of the test images with "
            f"replacement, seed {s.seed}, percentile method; evaluation.bootstrap). PxAP pools pixels over all "
            "images and the per-image tables keep no pixel counts, so it has no interval.")


def _write_main(out, ci, eval_paths, baseline_paths, meta):
    main = main_table(eval_paths, meta, baseline_paths, ci=ci)
    _write_csv(main, out / "main.csv")
    write_text_atomic(out / "main.md", "Localization (%) — rows with source 'paper' are the published numbers; "
                                       "'ours' and 'baseline' are measured here (PxAP only where the dataset has "
                                       "masks). MaxBoxAccV2 takes τ chosen on the test set; calibration.md compares "
                                       "fixed, held-out-calibrated and test-chosen thresholds. cls1 / cls5: the "
                                       "classifier's Top-1 / Top-5 accuracy. " + _interval_note(ci) + "\n\n"
                      + to_markdown(main))


def write_tables(out_dir, eval_paths, ablation_paths=(), baseline_paths=(), meta=None, calibration_paths=(),
                 per_image=None, bootstrap=None, main_run=None, combine_ratio=None):
    """Write main, combine_ratio, threshold_curve, pr_curve, error_breakdown, calibration and paired
    tables/figures under ``out_dir`` (calibration: the JSONs of ``calibration_paths``; a note when there are
    none). per_image / bootstrap: see :class:`Intervals`; main_run / combine_ratio: see :func:`paired_table`."""
    out = Path(out_dir)
    ci = Intervals(per_image, bootstrap)
    _write_main(out, ci, eval_paths, baseline_paths, meta)
    ratio = combine_ratio_table(ablation_paths, meta, ci=ci)
    _write_csv(ratio, out / "combine_ratio.csv")
    write_text_atomic(out / "combine_ratio.md", _interval_note(ci) + "\n\n" + to_markdown(ratio))
    plot_combine_ratio(ratio, out / "combine_ratio.png")
    curve = threshold_curve_table(eval_paths, meta, ci=ci)
    _write_csv(curve, out / "threshold_curve.csv")
    plot_threshold_curve(curve, out / "threshold_curve.png")
    pr = pr_curve_table(eval_paths, meta)
    _write_csv(pr, out / "pr_curve.csv")
    plot_pr_curve(pr, out / "pr_curve.png")
    eb = error_breakdown_table(eval_paths, meta)
    _write_csv(eb, out / "error_breakdown.csv")
    write_text_atomic(out / "error_breakdown.md", to_markdown(eb))
    cal = calibration_table(calibration_paths, meta)
    _write_csv(cal, out / "calibration.csv")
    write_text_atomic(out / "calibration.md", CALIBRATION_NOTE + (
        to_markdown(cal) if len(cal) else "No calibration: evaluation.calibration is off (null).\n"))
    paired = paired_table(eval_paths, ablation_paths, baseline_paths, meta, ci=ci, main_run=main_run,
                          combine_ratio=combine_ratio)
    _write_csv(paired, out / "paired.csv")
    write_text_atomic(out / "paired.md", PAIRED_NOTE + (to_markdown(paired) if len(paired) else
                                                        "No comparison: one run, no baseline and no sweep.\n"))


def _cli(args):
    write_tables(args.out, args.summaries, args.ablation or (), args.baselines or (),
                 calibration_paths=args.calibration or (),
                 bootstrap={"samples": args.bootstrap_samples, "seed": args.bootstrap_seed,
                            "level": args.bootstrap_level},
                 main_run=args.main_run, combine_ratio=args.combine_ratio)


def register_cli(subparsers):
    p = subparsers.add_parser("tables", help="paper tables (CSV, Markdown, PNG) from evaluation summaries",
                              description="Build results/tables/{main,combine_ratio,threshold_curve,pr_curve,"
                                          "error_breakdown,calibration,paired} "
                                          "from summary.json files written by `genpromp evaluate`. Dataset, run, "
                                          "variant and ratio are read from each summary. Confidence intervals "
                                          "come from the per_image.parquet beside each summary (none without it).")
    p.add_argument("--summaries", nargs="+", required=True, help="summary.json of the main variants")
    p.add_argument("--ablation", nargs="*", help="summary.json of the combine-ratio sweep variants")
    p.add_argument("--baselines", nargs="*", help="summary.json of the centre / full-image baselines")
    p.add_argument("--calibration", nargs="*", help="calibration JSONs (threshold choices on held-out images)")
    p.add_argument("--out", default=layout.tables_dir(), help="output folder (default: the workflow's tables folder)")
    boot = bootstrap_settings()
    p.add_argument("--bootstrap-samples", type=int, default=boot.samples,
                   help="bootstrap resamples (evaluation.bootstrap.samples)")
    p.add_argument("--bootstrap-seed", type=int, default=boot.seed, help="resampling seed (evaluation.bootstrap.seed)")
    p.add_argument("--bootstrap-level", type=float, default=boot.level,
                   help="interval coverage (evaluation.bootstrap.level)")
    p.add_argument("--main-run", default=None, help="run compared with the others in paired.* (default: the first "
                                                    "summary's run; the workflow's first run)")
    p.add_argument("--combine-ratio", type=float, default=None,
                   help="the sweep's reference w in paired.* (default: the main run's ratio; test.combine_ratio)")
    p.set_defaults(func=_cli)
