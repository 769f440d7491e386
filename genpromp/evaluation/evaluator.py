"""Per-image evaluation and the accumulating :class:`Evaluator` (both protocols).

``evaluate_image`` scores one image from its maps; ``Evaluator.accumulate`` collects results and
``compute`` returns the summary dict. Nothing here reads or writes files or prints.

Which map scores what (TS-CAM protocol, SPEC § Evaluation):

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

from .metrics import (
    ERROR_CATEGORIES, box_acc_curve, box_iou_matrix, classify_top1_error, max_box_acc,
    scale_boxes_tscam, scale_boxes_wsol, tscam_box,
)
from .tscam import prepare_tscam_cam, tscam_sweep_boxes, tscam_sweep_ious
from .wsol import prepare_wsol_cam, wsol_sweep_ious

__all__ = ["EvalSettings", "ImageInput", "ImageResult", "Evaluator", "evaluate_image", "summarize_results"]


@dataclass(frozen=True)
class EvalSettings:
    """Protocol parameters (config ``evaluation`` + the dataset's ``cam_thr``)."""

    cam_thr: float = 0.23
    frame: int = 512
    wsol_frame: int = 224
    thresholds: tuple = tuple(np.arange(0.0, 1.0, 0.01).tolist())
    iou_thresholds: tuple = (0.3, 0.5, 0.7)
    protocols: tuple = ("tscam", "wsol")


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

    ``tscam_ious`` [T]: GT-class box IoU per sweep threshold (TS-CAM); ``wsol_v1`` / ``wsol_v2`` [T]:
    best IoU per τ (wsolevaluation, largest / all contours). Fields of a protocol not run are empty.
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
    tscam_ious: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    wsol_v1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    wsol_v2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _tscam_point(cam, gt_frame, settings):
    u8 = prepare_tscam_cam(cam, settings.frame)
    box = tscam_box(u8, settings.cam_thr)
    return u8, box, float(box_iou_matrix(box, gt_frame).max())


def evaluate_image(inp, settings):
    """Score one :class:`ImageInput` under ``settings``; return an :class:`ImageResult`."""
    if "gt" not in inp.maps:
        raise KeyError(f"image {inp.image_id!r} has no 'gt'-role map")
    gt_frame = scale_boxes_tscam(inp.gt_boxes, inp.width, inp.height, settings.frame)
    u8, box_gt, iou_gt = _tscam_point(inp.maps["gt"][1], gt_frame, settings)
    res = ImageResult(inp.image_id, int(inp.label), None, None, None, [int(v) for v in box_gt], iou_gt,
                      iou_gt >= 0.5, None, None, None, None, None)
    if inp.top5_ids is not None:
        top5 = [int(c) for c in inp.top5_ids]
        res.top1_id, res.cls1, res.cls5 = top5[0], top5[0] == inp.label, inp.label in top5
        res.top5_loc = bool(res.cls5 and iou_gt > 0.5)
        if "top1" in inp.maps:
            _, box_top1, iou_top1 = _tscam_point(inp.maps["top1"][1], gt_frame, settings)
        else:  # no top-1 map stored (gtk cache): only meaningful when the class is right
            box_top1, iou_top1 = (box_gt, iou_gt) if res.cls1 else (None, None)
        res.box_top1 = None if box_top1 is None else [int(v) for v in box_top1]
        res.iou_top1 = iou_top1
        res.top1_loc = bool(res.cls1 and iou_top1 is not None and iou_top1 > 0.5)
        res.error = classify_top1_error(res.cls1, res.box_top1, gt_frame) if res.box_top1 is not None else "Cls"
    if "tscam" in settings.protocols:
        res.tscam_ious = tscam_sweep_ious(tscam_sweep_boxes(u8, settings.thresholds), gt_frame).astype(np.float32)
    if "wsol" in settings.protocols:
        gt_w = scale_boxes_wsol(inp.gt_boxes, inp.width, inp.height, settings.wsol_frame)
        u8w = prepare_wsol_cam(inp.maps["gt"][1], settings.wsol_frame)
        v1, v2 = wsol_sweep_ious(u8w, settings.thresholds, gt_w)
        res.wsol_v1, res.wsol_v2 = v1.astype(np.float32), v2.astype(np.float32)
    return res


def _pct(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values) * 100.0) if values else None


def _wsol_summary(ious, thresholds, deltas):
    acc, idx, mean = max_box_acc(ious, deltas)
    return {
        "max_box_acc": {f"{d:g}": acc[d] for d in acc},
        "best_threshold": {f"{d:g}": float(thresholds[idx[d]]) for d in idx},
        "mean": mean,
        "curve": {f"{d:g}": box_acc_curve(ious, d).tolist() for d in acc},
    }


def summarize_results(results, settings):
    """Aggregate a list of :class:`ImageResult` into the summary dict (percentages, 0–100)."""
    n = len(results)
    has_cls = n > 0 and results[0].cls1 is not None
    thr = [float(t) for t in settings.thresholds]
    out = {"n_images": n, "thresholds": thr}
    ts = {"cam_thr": settings.cam_thr, "frame": settings.frame,
          "gt_known": _pct([r.gt_known for r in results]),
          "top1_loc": _pct([r.top1_loc for r in results]) if has_cls else None,
          "top5_loc": _pct([r.top5_loc for r in results]) if has_cls else None,
          "cls1": _pct([r.cls1 for r in results]) if has_cls else None,
          "cls5": _pct([r.cls5 for r in results]) if has_cls else None,
          "error_breakdown": None}
    if has_cls:
        cats = [r.error for r in results]
        ts["error_breakdown"] = {c: 100.0 * cats.count(c) / n for c in ERROR_CATEGORIES}
    if "tscam" in settings.protocols and n:
        ious = np.stack([r.tscam_ious for r in results]).astype(np.float64)
        gtk = (ious >= 0.5).mean(axis=0) * 100
        curve = {"gt_known": gtk.tolist()}
        if has_cls:
            cls1 = np.array([r.cls1 for r in results])[:, None]
            cls5 = np.array([r.cls5 for r in results])[:, None]
            curve["top1_loc"] = (((ious > 0.5) & cls1).mean(axis=0) * 100).tolist()
            curve["top5_loc"] = (((ious > 0.5) & cls5).mean(axis=0) * 100).tolist()
        ts["curve"] = curve
        ts["best_gt_known"] = {"threshold": thr[int(np.argmax(gtk))], "value": float(gtk.max())}
    out["tscam"] = ts
    if "wsol" in settings.protocols and n:
        deltas = [float(d) for d in settings.iou_thresholds]
        out["wsol"] = {"frame": settings.wsol_frame, "iou_thresholds": deltas,
                       "v2": _wsol_summary(np.stack([r.wsol_v2 for r in results]), thr, deltas),
                       "v1": _wsol_summary(np.stack([r.wsol_v1 for r in results]), thr, deltas)}
    return out


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

    def compute(self):
        """Summary dict over everything accumulated (see :func:`summarize_results`)."""
        return summarize_results(self.results, self.settings)
