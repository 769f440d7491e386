"""Threshold calibration on held-out labelled images.

Picking the CAM threshold on the very test set it is scored on (the *oracle* choice) flatters a
method; Choe et al. (CVPR'20, wsolevaluation) recommend choosing it on a small, fully annotated
held-out set instead ("train-fullsup"). Here the held-out set is the first ``images_per_class``
training images of each class that carry at least one box, in training-index order
(:func:`select_heldout`). The training stages never read boxes, so these boxes are unseen; the
images themselves were class examples for the tokens (a caveat the tables state).

Their CAMs are extracted in ``gtk`` mode with the variant's combine ratio and timesteps and
evaluated by the same code as the test set; :func:`calibrate` then reads the held-out and the test
summary:

- TS-CAM protocol: ``cam_thr*`` is the TS-CAM curve threshold (``evaluation.tscam_sweep``) with the
  highest held-out GT-known Loc; the test's GT-known / Top-1 / Top-5 Loc at ``cam_thr*`` are the
  test summary's curve values at that threshold.
- wsolevaluation protocol: for each IoU threshold δ, ``τ*_δ`` is the τ (``evaluation.sweep``) with
  the highest held-out BoxAcc(δ); the test's BoxAcc(δ) at ``τ*_δ`` and their mean over δ (the
  calibrated MaxBoxAccV2; likewise for V1).

Ties go to the first (lowest) threshold, like ``np.argmax`` and the rest of the evaluation. Next to
the calibrated numbers the result keeps the *fixed* ones (the config's ``cam_thr``, the paper's
protocol; TS-CAM only) and the *oracle* ones (the test set's own best threshold: the test's GT-known
curve maximiser for TS-CAM, MaxBoxAcc's τ per δ for wsolevaluation).
The workflow runs these as rules ``heldout_index``, ``extract_heldout_cams``, ``heldout_cam_index``,
``evaluate_heldout`` and ``calibrate`` (workflow/rules/calibrate.smk).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import atomic_path, write_text_atomic
from .metrics import first_argmax, mean_box_acc

__all__ = ["select_heldout", "write_heldout_index", "calibrate", "run_calibrate"]

INDEX_COLUMNS = ("image_id", "path", "label", "width", "height", "boxes")


def select_heldout(train, images_per_class, source="<train index>"):
    """The held-out rows of a training index (DataFrame with the index columns): for each class (in
    order of first appearance) its first ``images_per_class`` rows that have at least one box.

    A class with fewer boxed rows is an :class:`InputError` naming ``source``; so is an index
    without a ``boxes`` column or without any boxed row.
    """
    n = int(images_per_class)
    if n < 1:
        raise ValueError(f"images_per_class must be ≥ 1, got {images_per_class}")
    missing = [c for c in INDEX_COLUMNS if c not in train.columns]
    if missing:
        raise InputError(source, f"index lacks columns {missing}; rebuild it with `genpromp index`")
    boxed = train[[b is not None and len(b) > 0 for b in train["boxes"]]]
    if boxed.empty:
        raise InputError(source, "no training image has a box, so there is no labelled held-out set; this layout "
                                 "(e.g. ImageNet's train list) carries no training boxes: set "
                                 "evaluation.calibration to null")
    picked = []
    for label in dict.fromkeys(train["label"]):
        rows = boxed[boxed["label"] == label]
        if len(rows) < n:
            raise InputError(source, f"class {int(label)} has {len(rows)} training images with boxes but "
                                     f"evaluation.calibration.images_per_class is {n}; lower it")
        picked.append(rows.iloc[:n])
    return pd.concat(picked).reset_index(drop=True)


def write_heldout_index(train_path, out_path, images_per_class):
    """Write the held-out index (same columns and types as the training index) atomically; return its rows."""
    table = pq.read_table(train_path)
    rows = select_heldout(table.to_pandas(), images_per_class, train_path)
    out = pa.Table.from_pandas(rows, schema=table.schema.remove_metadata(), preserve_index=False)
    with atomic_path(out_path) as tmp:
        pq.write_table(out, tmp)
    return len(rows)


def _same_list(a, b, what, path):
    if [float(x) for x in a] != [float(x) for x in b]:
        raise InputError(path, f"{what} differ between the held-out and the test summary; evaluate both with the "
                               "same evaluation settings")


def _at(curve, i):
    return None if curve is None else float(curve[i])


def _tscam(heldout, test, paths):
    hts, tts = heldout["tscam"], test["tscam"]
    fixed = {"threshold": float(tts["cam_thr"]), "gt_known": tts["gt_known"], "top1_loc": tts.get("top1_loc"),
             "top5_loc": tts.get("top5_loc")}
    if "curve" not in tts or "curve" not in hts:
        return {"fixed": fixed, "calibrated": None, "oracle": None}
    thr = [float(t) for t in tts["thresholds"]]
    _same_list(hts["thresholds"], thr, "TS-CAM curve thresholds (evaluation.tscam_sweep)", paths[0])
    curve = tts["curve"]

    def point(i, extra=None):
        return {"threshold": thr[i], **(extra or {}), "gt_known": _at(curve["gt_known"], i),
                "top1_loc": _at(curve.get("top1_loc"), i), "top5_loc": _at(curve.get("top5_loc"), i)}

    k = first_argmax(hts["curve"]["gt_known"])
    return {"fixed": fixed, "calibrated": point(k, {"heldout_gt_known": float(hts["curve"]["gt_known"][k])}),
            "oracle": point(first_argmax(curve["gt_known"]))}


def _wsol_version(held, test, thr):
    cal = {"threshold": {}, "heldout_box_acc": {}, "box_acc": {}}
    oracle = {"threshold": {}, "box_acc": {}}
    for d, curve in test["curve"].items():
        k = first_argmax(held["curve"][d])
        cal["threshold"][d], cal["heldout_box_acc"][d] = thr[k], float(held["curve"][d][k])
        cal["box_acc"][d] = float(curve[k])
        j = first_argmax(curve)
        oracle["threshold"][d], oracle["box_acc"][d] = thr[j], float(curve[j])
    cal["mean"] = mean_box_acc(cal["box_acc"])
    oracle["mean"] = mean_box_acc(oracle["box_acc"])
    return {"calibrated": cal, "oracle": oracle}


def _wsol(heldout, test, paths):
    if "wsol" not in test or "wsol" not in heldout:
        return None
    thr = [float(t) for t in test["thresholds"]]
    _same_list(heldout["thresholds"], thr, "wsolevaluation thresholds (evaluation.sweep)", paths[0])
    _same_list(heldout["wsol"]["iou_thresholds"], test["wsol"]["iou_thresholds"],
               "IoU thresholds (evaluation.iou_thresholds)", paths[0])
    return {v: _wsol_version(heldout["wsol"][v], test["wsol"][v], thr) for v in ("v2", "v1")}


def calibrate(heldout, test, paths=("<held-out summary>", "<test summary>")):
    """Calibrated, fixed and oracle test numbers (percent) from a held-out and a test summary dict
    (:func:`~.evaluator.summary_from_state` layout); see the module docstring for the rules.

    Returns ``{"n_heldout", "n_test", "tscam": {"fixed", "calibrated", "oracle"}, "wsol": {"v2"|"v1":
    {"calibrated", "oracle"}} | None}``; each TS-CAM entry holds ``threshold``, ``gt_known``,
    ``top1_loc``, ``top5_loc`` (None without classifier scores), the calibrated one also
    ``heldout_gt_known``; each wsolevaluation entry ``threshold`` and ``box_acc`` per δ and their
    ``mean``, the calibrated one also ``heldout_box_acc``.
    """
    return {"n_heldout": int(heldout["n_images"]), "n_test": int(test["n_images"]),
            "tscam": _tscam(heldout, test, paths), "wsol": _wsol(heldout, test, paths)}


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read evaluation summary ({exc}); re-run its evaluation") from exc


def run_calibrate(heldout_summary, test_summary, out_path, meta=None):
    """Calibrate from two summary JSON files and write the result JSON (with ``meta`` and both
    summary paths) atomically; return the dict."""
    out = dict(meta or {})
    out.update({"heldout_summary": str(heldout_summary), "test_summary": str(test_summary)})
    out.update(calibrate(_read(heldout_summary), _read(test_summary), (heldout_summary, test_summary)))
    write_text_atomic(out_path, json.dumps(out, indent=1) + "\n")
    return out
