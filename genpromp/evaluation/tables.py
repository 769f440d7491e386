"""Paper tables from evaluation summaries: CSV + Markdown (+ PNG figures via ``plots``).

Every function takes summary JSON paths and a metadata dict ``{path: {dataset, run, variant, mode,
ratio}}`` (the workflow's ``EVAL_META``); missing metadata is read from the summary itself.
CLI: ``genpromp tables``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layout
from ..errors import InputError
from ..io import atomic_path, write_text_atomic
from .metrics import ERROR_CATEGORIES
from .plots import plot_combine_ratio, plot_pr_curve, plot_threshold_curve

__all__ = [
    "PAPER_NUMBERS", "load_summary", "main_table", "combine_ratio_table", "threshold_curve_table",
    "pr_curve_table", "error_breakdown_table", "calibration_table", "to_markdown", "write_tables", "register_cli",
]

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


def main_table(paths, meta=None, baseline_paths=()):
    """Top-1 / Top-5 / GT-known Loc, MaxBoxAccV2 and PxAP (None without masks) per dataset and run,
    baselines, and paper rows."""
    rows, families = [], []
    for p in paths:
        s, m = load_summary(p, meta)
        ts = s["tscam"]
        rows.append({"source": "ours", "dataset": m["dataset"], "run": m["run"], "variant": m["variant"],
                     "method": "GenPromp (ours)", "top1_loc": ts["top1_loc"], "top5_loc": ts["top5_loc"],
                     "gt_known": ts["gt_known"], "max_box_acc_v2": _v2(s), "pxap": _pxap(s)})
        families.append(paper_family(m["dataset"]))
    for p in baseline_paths:
        s, m = load_summary(p, meta)
        ts = s["tscam"]
        rows.append({"source": "baseline", "dataset": m["dataset"], "run": None, "variant": None,
                     "method": f"{m.get('baseline') or 'baseline'} box", "top1_loc": ts["top1_loc"],
                     "top5_loc": ts["top5_loc"], "gt_known": ts["gt_known"], "max_box_acc_v2": _v2(s),
                     "pxap": _pxap(s)})
    for fam in dict.fromkeys(f for f in families if f):
        for method, nums in PAPER_NUMBERS.items():
            t1, t5, gk = nums[fam]
            rows.append({"source": "paper", "dataset": fam, "run": None, "variant": None, "method": method,
                         "top1_loc": t1, "top5_loc": t5, "gt_known": gk, "max_box_acc_v2": None, "pxap": None})
        rows.append({"source": "paper", "dataset": fam, "run": None, "variant": None, "method": "center baseline",
                     "top1_loc": None, "top5_loc": None, "gt_known": None, "max_box_acc_v2": PAPER_CENTER_V2[fam],
                     "pxap": None})
    return pd.DataFrame(rows)


def combine_ratio_table(paths, meta=None):
    """GT-known Loc, MaxBoxAccV2 and PxAP vs combine ratio w (ablation variants)."""
    rows = []
    for p in paths:
        s, m = load_summary(p, meta)
        rows.append({"dataset": m["dataset"], "run": m["run"], "variant": m["variant"],
                     "ratio": float(m["ratio"]) if m.get("ratio") is not None else np.nan,
                     "gt_known": s["tscam"]["gt_known"], "max_box_acc_v2": _v2(s), "pxap": _pxap(s)})
    return pd.DataFrame(rows).sort_values(["dataset", "run", "ratio"]).reset_index(drop=True)


def threshold_curve_table(paths, meta=None):
    """Long table: GT-known and Top-1 Loc (%) per threshold for each summary (TS-CAM protocol)."""
    rows = []
    for p in paths:
        s, m = load_summary(p, meta)
        curve = s["tscam"].get("curve", {})
        thr = s["tscam"].get("thresholds", s["thresholds"])  # TS-CAM curve thresholds (evaluation.tscam_sweep)
        for i, t in enumerate(thr):
            rows.append({"dataset": m["dataset"], "run": m["run"], "variant": m["variant"], "threshold": t,
                         "gt_known": curve["gt_known"][i] if "gt_known" in curve else None,
                         "top1_loc": curve["top1_loc"][i] if "top1_loc" in curve else None})
    return pd.DataFrame(rows)


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


CALIBRATION_NOTE = (
    "Test localization (%) at three threshold choices. **fixed**: the config's cam_thr (the paper's protocol; "
    "TS-CAM only). **calibrated**: the threshold that scores best on held-out labelled training images "
    "(evaluation.calibration; their boxes are unseen by training, the images were class examples), chosen per "
    "IoU threshold δ for wsolevaluation. **oracle**: the threshold that scores best on the test set itself "
    "(optimistic; MaxBoxAccV2 in main.md is this choice). Ties go to the lowest threshold.\n\n")


def _threshold_text(v):
    """A threshold as written in the config: up to 4 decimals, trailing zeros dropped (0.23, 0.1, 0)."""
    return f"{v:.4f}".rstrip("0").rstrip(".")


def to_markdown(df, digits=1):
    """A GitHub Markdown table; floats with ``digits`` decimals (columns named ``*threshold`` as
    thresholds: 0.23, not 0.2), missing values as '–'."""
    def fmt(v, column):
        if v is None or (isinstance(v, float) and np.isnan(v)):
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


def write_tables(out_dir, eval_paths, ablation_paths=(), baseline_paths=(), meta=None, calibration_paths=()):
    """Write main, combine_ratio, threshold_curve, pr_curve, error_breakdown and calibration tables/figures
    under ``out_dir`` (calibration: the JSONs of ``calibration_paths``; a note when there are none)."""
    out = Path(out_dir)
    main = main_table(eval_paths, meta, baseline_paths)
    _write_csv(main, out / "main.csv")
    write_text_atomic(out / "main.md", "Localization (%) — rows with source 'paper' are the published numbers; "
                                       "'ours' and 'baseline' are measured here (PxAP only where the dataset has "
                                       "masks). MaxBoxAccV2 takes τ chosen on the test set; calibration.md compares "
                                       "fixed, held-out-calibrated and test-chosen thresholds.\n\n" + to_markdown(main))
    ratio = combine_ratio_table(ablation_paths, meta) if ablation_paths else pd.DataFrame(
        columns=["dataset", "run", "variant", "ratio", "gt_known", "max_box_acc_v2", "pxap"])
    _write_csv(ratio, out / "combine_ratio.csv")
    write_text_atomic(out / "combine_ratio.md", to_markdown(ratio))
    plot_combine_ratio(ratio, out / "combine_ratio.png")
    curve = threshold_curve_table(eval_paths, meta)
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


def _cli(args):
    write_tables(args.out, args.summaries, args.ablation or (), args.baselines or (),
                 calibration_paths=args.calibration or ())


def register_cli(subparsers):
    p = subparsers.add_parser("tables", help="paper tables (CSV, Markdown, PNG) from evaluation summaries",
                              description="Build results/tables/{main,combine_ratio,threshold_curve,pr_curve,"
                                          "error_breakdown,calibration} "
                                          "from summary.json files written by `genpromp evaluate`. Dataset, run, "
                                          "variant and ratio are read from each summary.")
    p.add_argument("--summaries", nargs="+", required=True, help="summary.json of the main variants")
    p.add_argument("--ablation", nargs="*", help="summary.json of the combine-ratio sweep variants")
    p.add_argument("--baselines", nargs="*", help="summary.json of the centre / full-image baselines")
    p.add_argument("--calibration", nargs="*", help="calibration JSONs (threshold choices on held-out images)")
    p.add_argument("--out", default=layout.tables_dir(), help="output folder (default: the workflow's tables folder)")
    p.set_defaults(func=_cli)
