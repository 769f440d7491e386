"""Per-image evaluation and the accumulating :class:`Evaluator` (both protocols).

``evaluate_image`` scores one image from its maps; ``Evaluator.accumulate`` collects results and
``compute`` returns the summary dict. Nothing here reads or writes files or prints.

Which map scores what (TS-CAM protocol):

- GT-known Loc uses the ``gt``-role map (the map of the ground-truth class), IoU ≥ 0.5.
- Top-1 Loc uses the ``top1``-role map: top-1 class correct and IoU > 0.5.
- Top-5 Loc: GT class among the classifier's top 5 and the GT-class map's box IoU > 0.5. The
  ``gt``-role map *is* the map of that class (in ``top5`` mode it equals the top-k slot whose class
  is the GT; in ``top1`` mode it is the only map of that class), so both modes use it.
- The threshold curves use the ``gt``-role map for all three: when the top-1 class is correct the
  top-1 map is the GT-class map (the cache stores one map per class, FORMATS.md).
- The wsolevaluation protocol (MaxBoxAcc, MaxBoxAccV2) is GT-known: it uses the ``gt``-role map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import schema_default
from .metrics import (
    ERROR_CATEGORIES, best_iou, box_acc_hits, box_acc_percent, classify_top1_error, first_argmax, max_box_acc,
    scale_boxes_tscam, scale_boxes_wsol, threshold_list, tscam_box,
)
from .tscam import prepare_tscam_cam, tscam_sweep_boxes, tscam_sweep_ious
from .wsol import prepare_wsol_cam, wsol_sweep_ious

__all__ = ["EvalSettings", "settings_from_params", "sweep_thresholds", "ImageInput", "ImageResult", "Evaluator",
           "evaluate_image", "score_classes", "wsol_summary", "summarize_results", "state_from_results", "merge_states",
           "summary_from_state", "json_copy"]


def sweep_thresholds(sweep):
    """The thresholds of a sweep entry ``{start, stop, step}`` (``evaluation.sweep`` / ``tscam_sweep``):
    ``np.arange(start, stop, step)`` in float64, as a tuple of floats."""
    return tuple(threshold_list(sweep["start"], sweep["stop"], sweep["step"]).tolist())


# How each settings field is read from its config value (settings_from_params and the schema defaults).
_CONVERT = {"frame": int, "wsol_frame": int, "sweep": sweep_thresholds, "tscam_sweep": sweep_thresholds,
            "iou_thresholds": lambda ds: tuple(float(d) for d in ds), "protocols": tuple}


def _schema_field(key):
    """A settings field whose default is the config schema's default of ``evaluation.<key>``."""
    return field(default_factory=lambda: _CONVERT[key](schema_default(f"evaluation.{key}")))


@dataclass(frozen=True)
class EvalSettings:
    """Protocol parameters (config ``evaluation`` + the dataset's ``cam_thr``); every default is the
    config schema's (``datasets.<d>.cam_thr``, ``evaluation.*``).

    ``thresholds`` is the wsolevaluation τ list (MaxBoxAcc/V2, ``evaluation.sweep``);
    ``tscam_thresholds`` the TS-CAM-protocol curve (``evaluation.tscam_sweep``; figure only, the Loc
    numbers at ``cam_thr`` are always computed exactly at ``cam_thr``).
    """

    cam_thr: float = field(default_factory=lambda: float(schema_default("datasets.*.cam_thr")))
    frame: int = _schema_field("frame")
    wsol_frame: int = _schema_field("wsol_frame")
    thresholds: tuple = _schema_field("sweep")
    tscam_thresholds: tuple = _schema_field("tscam_sweep")
    iou_thresholds: tuple = _schema_field("iou_thresholds")
    protocols: tuple = _schema_field("protocols")


def settings_from_params(evaluation, cam_thr):
    """EvalSettings from the config's ``evaluation`` section (a dict) and a dataset's ``cam_thr``.

    Keys missing from ``evaluation`` (or from its sweep entries) take the schema's defaults.
    """
    params = schema_default("evaluation")
    for key, value in evaluation.items():
        both_dicts = isinstance(value, dict) and isinstance(params.get(key), dict)
        params[key] = {**params[key], **value} if both_dicts else value
    c = {k: convert(params[k]) for k, convert in _CONVERT.items()}
    return EvalSettings(cam_thr=float(cam_thr), frame=c["frame"], wsol_frame=c["wsol_frame"], thresholds=c["sweep"],
                        tscam_thresholds=c["tscam_sweep"], iou_thresholds=c["iou_thresholds"],
                        protocols=c["protocols"])


@dataclass
class ImageInput:
    """One test image: GT boxes [G, 4] in original pixels (x1y1x2y2), maps {role: (class_id, cam [S, S])},
    and the classifier's top-5 class ids (best first) or None when no scores are used (gtk)."""

    image_id: str
    label: int
    width: int
    height: int
    gt_boxes: np.ndarray
    maps: dict
    top5_ids: tuple | None = None


@dataclass
class ImageResult:
    """Scores of one image. Boxes are frame pixels, x1y1x2y2 inclusive (TS-CAM frame).

    ``tscam_ious`` [T']: GT-class box IoU per TS-CAM curve threshold; ``wsol_v1`` / ``wsol_v2`` [T]:
    best IoU per τ (wsolevaluation, largest / all contours). Fields of a protocol not run are empty.
    Every IoU is float64, as computed, so that thresholding it later decides ties exactly (an IoU of
    7/10 stored as float32 would fall below δ = 0.7).
    """

    image_id: str
    label: int
    top1_id: int | None
    cls1: bool | None
    cls5: bool | None
    box_gt: list
    iou_gt: float
    gt_known: bool
    box_top1: list | None
    iou_top1: float | None
    top1_loc: bool | None
    top5_loc: bool | None
    error: str | None
    tscam_ious: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    wsol_v1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    wsol_v2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))


def _tscam_point(cam, gt_frame, settings):
    u8 = prepare_tscam_cam(cam, settings.frame)
    box = tscam_box(u8, settings.cam_thr)
    return u8, box, best_iou(box, gt_frame)


def _same_map(a, b):
    """True when two (class_id, cam) entries hold the same class and bit-identical maps."""
    return a[0] == b[0] and (a[1] is b[1] or np.array_equal(a[1], b[1]))


def score_classes(res, top5_ids, top1_point, gt_frame):
    """Fill the classifier fields of an :class:`ImageResult` whose GT-map fields are set; return it.

    top5_ids: the classifier's top-5 class ids, best first. top1_point: ``(box, iou)`` of the top-1
    class's map in the TS-CAM frame, or None when no top-1 map is stored (a gtk cache): the GT-class
    map is then the top-1 map when the top-1 class is right, and there is no top-1 box otherwise.
    Top-1 Loc: class right and IoU > 0.5; Top-5 Loc: GT class in the top 5 and the GT map's IoU > 0.5.
    """
    top5 = [int(c) for c in top5_ids]
    res.top1_id, res.cls1, res.cls5 = top5[0], top5[0] == res.label, res.label in top5
    res.top5_loc = bool(res.cls5 and res.iou_gt > 0.5)
    if top1_point is None:
        top1_point = (res.box_gt, res.iou_gt) if res.cls1 else (None, None)
    box_top1, res.iou_top1 = top1_point
    res.box_top1 = None if box_top1 is None else [int(v) for v in box_top1]
    res.top1_loc = bool(res.cls1 and res.iou_top1 is not None and res.iou_top1 > 0.5)
    res.error = classify_top1_error(res.cls1, res.box_top1, gt_frame) if res.box_top1 is not None else "Cls"
    return res


def _top1_point(inp, box_gt, iou_gt, gt_frame, settings):
    """(box, iou) of the top-1 map, or None when the image stores none."""
    if "top1" not in inp.maps:
        return None
    if _same_map(inp.maps["top1"], inp.maps["gt"]):
        return box_gt, iou_gt  # one map per class: identical input, identical box
    _, box, iou = _tscam_point(inp.maps["top1"][1], gt_frame, settings)
    return box, iou


def evaluate_image(inp, settings):
    """Score one :class:`ImageInput` under ``settings``; return an :class:`ImageResult`."""
    if "gt" not in inp.maps:
        raise KeyError(f"image {inp.image_id!r} has no 'gt'-role map")
    gt_frame = scale_boxes_tscam(inp.gt_boxes, inp.width, inp.height, settings.frame)
    u8, box_gt, iou_gt = _tscam_point(inp.maps["gt"][1], gt_frame, settings)
    res = ImageResult(inp.image_id, int(inp.label), None, None, None, [int(v) for v in box_gt], iou_gt,
                      iou_gt >= 0.5, None, None, None, None, None)
    if inp.top5_ids is not None:
        score_classes(res, inp.top5_ids, _top1_point(inp, box_gt, iou_gt, gt_frame, settings), gt_frame)
    if "tscam" in settings.protocols:
        res.tscam_ious = tscam_sweep_ious(tscam_sweep_boxes(u8, settings.tscam_thresholds), gt_frame)
    if "wsol" in settings.protocols:
        gt_w = scale_boxes_wsol(inp.gt_boxes, inp.width, inp.height, settings.wsol_frame)
        u8w = prepare_wsol_cam(inp.maps["gt"][1], settings.wsol_frame)
        v1, v2 = wsol_sweep_ious(u8w, settings.thresholds, gt_w)
        res.wsol_v1, res.wsol_v2 = v1, v2
    return res


def _count(values):
    """(number of True, number of non-None) of a list of bool-or-None."""
    values = [v for v in values if v is not None]
    return [int(sum(bool(v) for v in values)), len(values)]


def _pct(count):
    """Percentage of a ``[hits, n]`` pair (None when n = 0); equal to ``np.mean(bools) * 100``."""
    hits, n = count
    return float(hits / n * 100.0) if n else None


def state_from_results(results, settings):
    """Accumulator state of a list of :class:`ImageResult`: integer counts only (JSON-serialisable).

    Keys: ``n_images``, ``has_cls``, ``point`` ({metric: [hits, n]}), ``errors`` ({category: count}),
    ``tscam_curve`` ({metric: [hits per TS-CAM threshold]}), ``wsol`` ({"v1"|"v2": {δ: [hits per τ]}}).
    States of disjoint image sets add up (:func:`merge_states`); :func:`summary_from_state` turns one
    into the summary dict. The hit counts threshold the results' float64 IoUs (≥ δ for MaxBoxAcc and
    GT-known, > 0.5 for Top-1/Top-5 Loc); a result holding another dtype is a TypeError, since a
    float32 IoU can land on the wrong side of δ.
    """
    n = len(results)
    has_cls = n > 0 and results[0].cls1 is not None
    state = {"n_images": n, "has_cls": has_cls,
             "point": {k: _count([getattr(r, k) for r in results])
                       for k in ("gt_known", "top1_loc", "top5_loc", "cls1", "cls5")},
             "errors": None, "tscam_curve": None, "wsol": None}
    if has_cls:
        cats = [r.error for r in results]
        state["errors"] = {c: cats.count(c) for c in ERROR_CATEGORIES}
    if "tscam" in settings.protocols and n:
        ious = _iou_matrix([r.tscam_ious for r in results], "tscam_ious")
        curve = {"gt_known": box_acc_hits(ious, 0.5).tolist()}  # GT-known Loc: IoU ≥ 0.5
        if has_cls:
            cls1 = np.array([r.cls1 for r in results])[:, None]
            cls5 = np.array([r.cls5 for r in results])[:, None]
            curve["top1_loc"] = ((ious > 0.5) & cls1).sum(axis=0).tolist()
            curve["top5_loc"] = ((ious > 0.5) & cls5).sum(axis=0).tolist()
        state["tscam_curve"] = curve
    if "wsol" in settings.protocols and n:
        state["wsol"] = {}
        for v in ("v1", "v2"):
            ious = _iou_matrix([getattr(r, f"wsol_{v}") for r in results], f"wsol_{v}")
            state["wsol"][v] = {f"{float(d):g}": box_acc_hits(ious, float(d)).tolist() for d in settings.iou_thresholds}
    return state


def _iou_matrix(rows, name):
    """Stack per-image float64 IoU vectors into [N, T]; any other dtype is a TypeError naming ``name``."""
    bad = [np.asarray(r).dtype for r in rows if np.asarray(r).dtype != np.float64]
    if bad:
        raise TypeError(f"ImageResult.{name} must be float64 IoUs (got {bad[0]}); a narrower float can move an IoU "
                        "of exactly δ below δ")
    return np.stack(rows)


def merge_states(states):
    """Sum accumulator states of disjoint image sets (any order): one state.

    Empty states (0 images) are neutral; all non-empty ones must agree on ``has_cls`` and on the
    curves present (same settings), else ValueError.
    """
    states = [s for s in states if s["n_images"] > 0]
    if not states:
        raise ValueError("no non-empty evaluation state to merge")
    out = json_copy(states[0])
    for s in states[1:]:
        if s["has_cls"] != out["has_cls"] or (s["tscam_curve"] is None) != (out["tscam_curve"] is None) \
                or (s["wsol"] is None) != (out["wsol"] is None):
            raise ValueError("evaluation states were computed with different settings or score availability")
        out["n_images"] += s["n_images"]
        for k, (hits, n) in s["point"].items():
            out["point"][k] = [out["point"][k][0] + hits, out["point"][k][1] + n]
        if out["errors"] is not None:
            out["errors"] = {c: out["errors"][c] + s["errors"][c] for c in ERROR_CATEGORIES}
        if out["tscam_curve"] is not None:
            out["tscam_curve"] = {k: _add(v, s["tscam_curve"][k]) for k, v in out["tscam_curve"].items()}
        if out["wsol"] is not None:
            out["wsol"] = {v: {d: _add(c, s["wsol"][v][d]) for d, c in per.items()} for v, per in out["wsol"].items()}
    return out


def json_copy(obj):
    """Deep copy of a JSON-like structure (dicts, lists, scalars)."""
    if isinstance(obj, dict):
        return {k: json_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_copy(v) for v in obj]
    return obj


def _add(a, b):
    if len(a) != len(b):
        raise ValueError(f"curve lengths differ ({len(a)} vs {len(b)}): states from different sweeps")
    return [int(x) + int(y) for x, y in zip(a, b)]


def wsol_summary(hits_by_delta, n, thresholds):
    """MaxBoxAcc summary of one version (V1 or V2) from its hit counts {δ: hits per τ} over ``n`` images:
    ``{"max_box_acc": {δ: %}, "best_threshold": {δ: τ}, "mean": %, "curve": {δ: % per τ}}``."""
    curves = {d: box_acc_percent(h, n) for d, h in hits_by_delta.items()}
    acc, idx, mean = max_box_acc(curves)
    return {
        "max_box_acc": acc,
        "best_threshold": {d: float(thresholds[i]) for d, i in idx.items()},
        "mean": mean,
        "curve": {d: c.tolist() for d, c in curves.items()},
    }


def summary_from_state(state, settings):
    """The summary dict (percentages, 0–100) of an accumulator state (see :func:`state_from_results`)."""
    n, has_cls = state["n_images"], state["has_cls"]
    thr = [float(t) for t in settings.thresholds]
    ts_thr = [float(t) for t in settings.tscam_thresholds]
    out = {"n_images": n, "thresholds": thr}
    pt = state["point"]
    ts = {"cam_thr": settings.cam_thr, "frame": settings.frame, "gt_known": _pct(pt["gt_known"]),
          "top1_loc": _pct(pt["top1_loc"]) if has_cls else None,
          "top5_loc": _pct(pt["top5_loc"]) if has_cls else None,
          "cls1": _pct(pt["cls1"]) if has_cls else None,
          "cls5": _pct(pt["cls5"]) if has_cls else None,
          "error_breakdown": None}
    if has_cls:
        ts["error_breakdown"] = {c: 100.0 * state["errors"][c] / n for c in ERROR_CATEGORIES}
    if state["tscam_curve"] is not None:
        curve = {k: box_acc_percent(v, n) for k, v in state["tscam_curve"].items()}
        gtk = curve["gt_known"]
        ts["thresholds"] = ts_thr
        ts["curve"] = {k: v.tolist() for k, v in curve.items()}
        ts["best_gt_known"] = {"threshold": ts_thr[first_argmax(gtk)], "value": float(gtk.max())}
    out["tscam"] = ts
    if state["wsol"] is not None:
        out["wsol"] = {"frame": settings.wsol_frame, "iou_thresholds": [float(d) for d in settings.iou_thresholds],
                       "v2": wsol_summary(state["wsol"]["v2"], n, thr),
                       "v1": wsol_summary(state["wsol"]["v1"], n, thr)}
    return out


def summarize_results(results, settings):
    """Aggregate a list of :class:`ImageResult` into the summary dict (percentages, 0–100)."""
    return summary_from_state(state_from_results(results, settings), settings)


class Evaluator:
    """Accumulate per-image results, then ``compute()`` the summary.

    >>> ev = Evaluator(EvalSettings()); ev.accumulate(image_input); summary = ev.compute()
    """

    def __init__(self, settings):
        self.settings = settings
        self.results = []

    def accumulate(self, inp):
        """Score one :class:`ImageInput`, keep and return its :class:`ImageResult`."""
        res = evaluate_image(inp, self.settings)
        self.results.append(res)
        return res

    def add_result(self, result):
        """Keep a result computed elsewhere (e.g. in a worker process)."""
        self.results.append(result)

    def state(self):
        """Accumulator state (integer counts, JSON-serialisable) of everything accumulated."""
        return state_from_results(self.results, self.settings)

    def compute(self):
        """Summary dict over everything accumulated (see :func:`summarize_results`)."""
        return summarize_results(self.results, self.settings)
