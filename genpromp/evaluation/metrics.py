"""Localization metrics of both evaluation protocols as small pure functions.

Conventions used throughout:

- Boxes are ``[x1, y1, x2, y2]`` integer pixel coordinates in an evaluation frame, **inclusive**:
  a box covers columns x1..x2 and rows y1..y2, so its area is (x2 − x1 + 1)(y2 − y1 + 1).
- CAMs are float arrays [H, W] (any non-negative scale); "u8" maps are uint8 [F, F].
- A threshold ``thr`` in [0, 1] is applied as the integer ``int(thr · max(u8))`` and keeps the
  pixels strictly above it (both THRESH_TOZERO and THRESH_BINARY do).
- IoUs are float64 quotients of integer pixel counts and stay float64 wherever they are compared
  with an IoU threshold, so ties such as IoU = 7/10 at δ = 0.7 decide as in exact arithmetic.

Nothing here prints, plots or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "TSCAM_FALLBACK_BOX", "WSOL_FALLBACK_BOX", "ERROR_CATEGORIES",
    "normalize_minmax", "resize_cam", "cam_to_uint8", "prepare_cam",
    "scale_boxes_tscam", "scale_boxes_wsol", "box_iou_matrix", "best_iou",
    "integer_threshold", "find_contours_above", "tscam_box", "wsol_boxes",
    "classify_top1_error", "box_acc_hits", "box_acc_percent", "first_argmax", "mean_box_acc", "max_box_acc",
    "center_gaussian_cam", "full_image_box", "threshold_list",
]

TSCAM_FALLBACK_BOX = (0, 0, 1, 1)
WSOL_FALLBACK_BOX = (0, 0, 0, 0)
ERROR_CATEGORIES = ("Cls", "M-ins", "Part", "More", "Wrong", "Right")


def threshold_list(start, stop, step):
    """Sweep thresholds ``np.arange(start, stop, step)`` as float64 [T] (wsolevaluation's list)."""
    return np.arange(start, stop, step, dtype=np.float64)


def normalize_minmax(cam, dtype=np.float32):
    """Min-max normalise to [0, 1] in ``dtype`` (same shape); a constant map or one with a NaN → zeros.

    Computes ``(cam − min) / (max − min)`` with every operation rounded in ``dtype`` (the scalars
    ``min``, ``max`` and ``max − min`` too), which is bit-identical to both references' forms:
    ``(cam − lo) / (hi − lo)`` (GenPromp, float32) and ``cam −= cam.min(); cam /= cam.max()``
    (wsolevaluation, float64): rounding is monotone, so the largest shifted value is ``fl(hi − lo)``.
    """
    cam = np.asarray(cam, dtype=dtype)
    lo, hi = cam.min(), cam.max()  # dtype scalars; a NaN propagates into both
    if np.isnan(lo) or np.isnan(hi) or hi == lo:
        return np.zeros_like(cam)
    out = np.subtract(cam, lo)
    return np.divide(out, hi - lo, out=out)


def resize_cam(cam, frame, interpolation, dtype=np.float32):
    """Resize a CAM [H, W] to ``dtype`` [frame, frame] with a cv2 interpolation flag (computed in ``dtype``)."""
    return cv2.resize(np.asarray(cam, dtype=dtype), (int(frame), int(frame)), interpolation=interpolation)


def cam_to_uint8(cam01):
    """``(cam · 255).astype(uint8)`` of a map in [0, 1], multiplied in the map's own float dtype
    (float32 or float64) and truncated, as the references do."""
    cam01 = np.asarray(cam01)
    if cam01.dtype not in (np.float32, np.float64):
        cam01 = cam01.astype(np.float32)
    return np.multiply(cam01, cam01.dtype.type(255)).astype(np.uint8)


def prepare_cam(cam, frame, interpolation, dtype=np.float32):
    """Resize, min-max normalise and quantise, all in ``dtype``: CAM [H, W] → uint8 [frame, frame].

    TS-CAM protocol: ``cv2.INTER_LINEAR``, frame 512, float32; wsolevaluation: ``cv2.INTER_CUBIC``,
    224, float64 (see :func:`~genpromp.evaluation.tscam.prepare_tscam_cam` and
    :func:`~genpromp.evaluation.wsol.prepare_wsol_cam`). The dtype matters: a float32 bicubic resize
    of a constant map leaves 1-ulp ripples that the min-max stretches into a pattern, float64 does not.
    """
    return cam_to_uint8(normalize_minmax(resize_cam(cam, frame, interpolation, dtype), dtype))


def scale_boxes_tscam(boxes, width, height, frame):
    """Map original-pixel GT boxes [G, 4] to the TS-CAM/GenPromp frame: int64 [G, 4].

    Per coordinate, in float64 and in this order (divide first, then multiply; ``int`` truncates):
    ``x1' = int(max(x1 / W * F, 0))``, ``y1' = int(max(y1 / H * F, 0))``,
    ``x2' = int(min(x2 / W * F, F - 1))``, ``y2' = int(min(y2 / H * F, F - 1))``.
    ``x * (F / W)`` or ``x * F / W`` can land on the other side of an integer for some (x, W).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h, f = float(width), float(height), float(frame)
    out = np.stack([np.maximum(b[:, 0] / w * f, 0.0), np.maximum(b[:, 1] / h * f, 0.0),
                    np.minimum(b[:, 2] / w * f, f - 1), np.minimum(b[:, 3] / h * f, f - 1)], axis=1)
    return np.trunc(out).astype(np.int64)


def scale_boxes_wsol(boxes, width, height, frame):
    """Rescale original-pixel GT boxes [G, 4] to the wsolevaluation frame: int64 [G, 4].

    Per coordinate, in float64 (multiply first, then divide; ``int`` truncates; nothing is clipped):
    ``x' = int(x * F / W)`` for x1 and x2, ``y' = int(y * F / H)`` for y1 and y2.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h, f = float(width), float(height), float(frame)
    return np.trunc(b * f / np.array([w, h, w, h])).astype(np.int64)


def _overlap(a, b):
    """Inclusive pixel counts of boxes ``a`` [A, 4] × ``b`` [B, 4], all int64: the intersections [A, B]
    and the areas of ``a`` [A, 1] and of ``b`` [1, B]."""
    a = np.asarray(a, dtype=np.int64).reshape(-1, 1, 4)
    b = np.asarray(b, dtype=np.int64).reshape(1, -1, 4)
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return iw * ih, area_a, area_b


def box_iou_matrix(a, b):
    """Inclusive IoU of every box in ``a`` [A, 4] with every box in ``b`` [B, 4]: float64 [A, B].

    Pixels count inclusively (+1). A pair whose union is ≤ 0 (degenerate boxes) has IoU 0.
    The quotient ``inter / union`` of two integers is rounded once to float64, as the references
    compute it, and must stay float64: then ``iou >= δ`` (δ a float64 such as 0.7) decides exactly
    as ``inter / union >= 7/10`` in rationals, because two distinct fractions with denominators below
    2^26 differ by far more than a float64 rounding error. An IoU of exactly 7/10 counts at δ = 0.7;
    cast to float32 it would become 0.69999999 and not count.
    """
    inter, area_a, area_b = _overlap(a, b)
    union = area_a + area_b - inter
    ok = union > 0
    return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def best_iou(boxes, gt_boxes):
    """Max inclusive IoU over all pairs of ``boxes`` [B, 4] × ``gt_boxes`` [G, 4] (float; 0 if empty)."""
    m = box_iou_matrix(boxes, gt_boxes)
    return float(m.max()) if m.size else 0.0


def integer_threshold(u8, thr):
    """The integer cut ``int(thr · max(u8))``; pixels strictly above it are foreground."""
    return int(thr * int(u8.max()))


def find_contours_above(u8, cut):
    """Contours (RETR_TREE, CHAIN_APPROX_SIMPLE) of the mask ``u8 > cut`` (uint8 [F, F] input)."""
    _, mask = cv2.threshold(u8, cut, 255, cv2.THRESH_BINARY)
    return cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]


def tscam_box(u8, thr):
    """TS-CAM box of a uint8 map: THRESH_TOZERO at int(thr·max), largest contour's bounding rect.

    Returns ``[x, y, x + w, y + h]`` (not clipped; int) or ``[0, 0, 1, 1]`` when no contour exists.
    """
    _, kept = cv2.threshold(u8, integer_threshold(u8, thr), 255, cv2.THRESH_TOZERO)
    contours = cv2.findContours(kept, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return list(TSCAM_FALLBACK_BOX)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return [x, y, x + w, y + h]


def wsol_boxes(u8, thr, multi_contour):
    """wsolevaluation boxes of a uint8 map at ``thr``: int64 [B, 4].

    THRESH_BINARY at int(thr·max); boxes of all contours (``multi_contour``, V2) or of the largest
    by contourArea (V1); x2, y2 clipped to size − 1; no contour → ``[[0, 0, 0, 0]]``.
    """
    height, width = u8.shape
    contours = find_contours_above(u8, integer_threshold(u8, thr))
    if len(contours) == 0:
        return np.array([WSOL_FALLBACK_BOX], dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return np.array(boxes, dtype=np.int64)


def classify_top1_error(class_correct, box, gt_boxes):
    """Top-1 error category of one image (TS-CAM's breakdown), checked in this order:

    ``Cls`` wrong top-1 class; ``Right`` IoU > 0.5 (best GT); ``M-ins`` ≥ 2 GT boxes and more than one
    of them has > 0.3 of its area inside the box; ``Part`` intersection / box area > 0.5 w.r.t. the
    best-IoU GT; ``More`` intersection / that GT's area ≥ 0.7; ``Wrong`` otherwise.
    box: [4] int, gt_boxes: [G, 4] int, inclusive pixel areas.
    """
    if not class_correct:
        return "Cls"
    g = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    ious = box_iou_matrix(box, g)[0]
    if ious.max() > 0.5:
        return "Right"
    inter, box_area, gt_area = _overlap(box, g)
    inter, box_area, gt_area = inter[0], int(box_area[0, 0]), gt_area[0]
    if len(g) > 1 and int((inter / gt_area > 0.3).sum()) > 1:
        return "M-ins"
    best = int(np.argmax(ious))
    if box_area > 0 and inter[best] / box_area > 0.5:
        return "Part"
    if inter[best] / gt_area[best] >= 0.7:
        return "More"
    return "Wrong"


def box_acc_hits(best_ious, delta):
    """Images whose best IoU is ≥ ``delta``, per threshold: best_ious [N, T] → int [T].

    best_ious must hold the float64 quotients of :func:`box_iou_matrix` (see there for why). These
    counts are what an evaluation state stores; states of disjoint image sets add up.
    """
    return (np.asarray(best_ious) >= delta).sum(axis=0)


def box_acc_percent(hits, n):
    """BoxAcc (%) per threshold from hit counts over ``n`` images: float64 [T].

    Computed as wsolevaluation reports it, ``num_correct * 100. / cnt`` (multiply first;
    ``hits / n * 100`` can differ in the last bit, e.g. for 1 of 7).
    """
    return np.asarray(hits, dtype=np.float64) * 100.0 / float(n)


def first_argmax(values):
    """Index of the first maximum of a non-empty sequence (ties: the lowest index, as ``np.argmax``)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot pick a threshold from an empty curve")
    return int(np.argmax(values))


def mean_box_acc(acc_by_delta):
    """Mean over the IoU thresholds δ of BoxAcc values {δ: %} (MaxBoxAccV2 when they are the maxima)."""
    return float(np.mean(list(acc_by_delta.values())))


def max_box_acc(curves):
    """MaxBoxAcc per δ and MaxBoxAccV2 (their mean), τ chosen per δ.

    curves: {δ: BoxAcc % per threshold index} (:func:`box_acc_percent`). Returns
    ``(acc {δ: %}, best_index {δ: t}, mean %)`` keyed like ``curves``; the first maximising index wins ties.
    """
    acc, idx = {}, {}
    for d, curve in curves.items():
        idx[d] = first_argmax(curve)
        acc[d] = float(np.max(curve))
    return acc, idx, mean_box_acc(acc)


def center_gaussian_cam(size, sigma_fraction=0.25):
    """Center-Gaussian baseline map (Choe et al. CVPR'20): isotropic Gaussian at the centre, float32 [size, size].

    sigma = sigma_fraction · size. Put through a protocol's threshold sweep it yields centred boxes
    of every size, i.e. "a box covering the image centre".
    """
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    sigma = sigma_fraction * size
    return np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def full_image_box(frame):
    """Full-image baseline box in a frame of side ``frame``: ``[0, 0, frame − 1, frame − 1]``."""
    return [0, 0, int(frame) - 1, int(frame) - 1]


@dataclass(frozen=True)
class ContourSweep:
    """Contour bounding rects of ``u8 > cut`` for T cuts, stored once per distinct mask.

    - ``rects`` int64 [R, 4]: (x, y, w, h) in frame coordinates, every contour of every distinct
      mask, each mask's contours in findContours order (RETR_TREE, CHAIN_APPROX_SIMPLE);
    - ``starts`` / ``counts`` int64 [M]: rows of mask m are ``rects[starts[m]:starts[m] + counts[m]]``
      (``counts[m] == 0`` for the empty mask);
    - ``largest`` int64 [M]: row in ``rects`` of the first contour of maximal contourArea, −1 if none;
    - ``mask_of`` int64 [T]: the distinct mask of cut t.
    """

    rects: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    largest: np.ndarray
    mask_of: np.ndarray


def _pixels_above(u8):
    """above[c] = number of pixels with value > c, for c = 0 … 255: int64 [256]."""
    if u8.size < 2 ** 24:  # calcHist counts in float32: exact below 2^24
        hist = cv2.calcHist([u8], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(u8.ravel(), minlength=256).astype(np.int64)
    return u8.size - np.cumsum(hist)


def _first_above(profile, cuts):
    """First index i with profile[i] > cut, for each cut (profile: max of each row/column)."""
    return np.searchsorted(np.maximum.accumulate(profile), cuts, side="right")


def sweep_contours(u8, cuts):
    """Contours of ``u8 > cut`` for many integer cuts, one findContours call per distinct mask.

    u8: uint8 [H, W]; cuts: ints in [0, 255]. Returns a :class:`ContourSweep`. Exact: two cuts with
    the same number of pixels above them have the same (nested) mask and share one call; each call
    runs on the mask's bounding crop (findContours pads with zeros, so contours only shift and keep
    their raster order); contourArea is only evaluated when a mask has more than one contour.
    """
    cuts = np.minimum(np.asarray(cuts, dtype=np.int64).reshape(-1), 255)
    keys = _pixels_above(u8)[cuts]
    uniq, first, mask_of = np.unique(keys, return_index=True, return_inverse=True)
    rowmax, colmax = u8.max(axis=1), u8.max(axis=0)
    h, w = u8.shape
    mcuts = cuts[first]
    r0, c0 = _first_above(rowmax, mcuts), _first_above(colmax, mcuts)
    r1, c1 = h - _first_above(rowmax[::-1], mcuts), w - _first_above(colmax[::-1], mcuts)
    rects, starts = [], np.zeros(len(uniq), np.int64)
    counts, largest = np.zeros(len(uniq), np.int64), np.full(len(uniq), -1, np.int64)
    for m in range(len(uniq)):
        starts[m] = len(rects)
        if uniq[m] == 0:
            continue
        y0, x0 = int(r0[m]), int(c0[m])
        _, mask = cv2.threshold(u8[y0:int(r1[m]), x0:int(c1[m])], int(mcuts[m]), 255, cv2.THRESH_BINARY)
        found = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        boxes = [cv2.boundingRect(c) for c in found]
        largest[m] = len(rects) + (_first_largest(found, boxes) if len(found) > 1 else 0)
        rects.extend((x + x0, y + y0, w_, h_) for x, y, w_, h_ in boxes)
        counts[m] = len(found)
    out = np.array(rects, dtype=np.int64).reshape(-1, 4)
    return ContourSweep(out, starts, counts, largest, mask_of.reshape(-1).astype(np.int64))


def _first_largest(contours, rects):
    """Index of the first contour of maximal cv2.contourArea (what ``max(..., key=contourArea)`` picks).

    A contour's polygon lies inside its bounding rect's pixel centres, so its area is at most
    (w − 1)(h − 1); a contour whose bound is ≤ the best area so far cannot win (ties keep the
    earlier one) and its area is not computed.
    """
    best, best_area = 0, cv2.contourArea(contours[0])
    for i in range(1, len(contours)):
        _, _, w, h = rects[i]
        if (w - 1) * (h - 1) > best_area:
            area = cv2.contourArea(contours[i])
            if area > best_area:
                best, best_area = i, area
    return best


def best_iou_per_group(boxes, starts, counts, gt_boxes, empty_value):
    """Max IoU over the GT boxes and over each group of consecutive ``boxes`` rows: float64 [M].

    Group m is ``boxes[starts[m]:starts[m] + counts[m]]``; an empty group gets ``empty_value``.
    """
    out = np.full(len(starts), float(empty_value), dtype=np.float64)
    has = counts > 0
    if has.any():
        per_box = box_iou_matrix(boxes, gt_boxes).max(axis=1)
        out[has] = np.maximum.reduceat(per_box, starts[has])
    return out


def sweep_contour_rects(u8, cuts):
    """Per-cut view of :func:`sweep_contours`: a list (one entry per cut) of ``(rects, largest)``.

    rects int64 [B, 4] as (x, y, w, h) in findContours order; ``largest`` the index (into rects) of
    the first contour of maximal contourArea, −1 when there is none. Identical to calling
    :func:`find_contours_above` per cut.
    """
    sw = sweep_contours(u8, cuts)
    per_mask = [(sw.rects[s:s + c], int(lg - s) if lg >= 0 else -1)
                for s, c, lg in zip(sw.starts, sw.counts, sw.largest)]
    return [per_mask[m] for m in sw.mask_of]


__all__ += ["ContourSweep", "sweep_contours", "best_iou_per_group", "sweep_contour_rects"]
