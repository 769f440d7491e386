"""wsolevaluation protocol (Choe et al. CVPR'20) for one image: MaxBoxAcc (V1) and MaxBoxAccV2.

CAM → bicubic resize to the frame (224) → min-max (constant or NaN → zeros) → uint8 (all in float64) → for each τ
THRESH_BINARY at int(τ·max) → boxes of all contours (V2) or the largest (V1), x2, y2 clipped to
size − 1, none → ``[0, 0, 0, 0]`` → best inclusive IoU over boxes × GT boxes.
"""

from __future__ import annotations

import cv2
import numpy as np

from .metrics import (
    WSOL_FALLBACK_BOX, best_iou, best_iou_per_group, box_iou_matrix, cam_to_uint8, integer_threshold,
    normalize_minmax, resize_cam, sweep_contours, wsol_boxes,
)

__all__ = ["WSOL_DTYPE", "wsol_scoremap", "prepare_wsol_cam", "wsol_sweep_ious", "wsol_sweep_ious_reference"]


#: Precision of wsolevaluation's map pipeline: maps become float64 before resizing (``t2n``).
WSOL_DTYPE = np.float64


def wsol_scoremap(cam, frame):
    """CAM [H, W] → float64 [frame, frame] in [0, 1]: bicubic resize and min-max, both in float64 (a
    constant or NaN-containing map → zeros). PxAP scores this map; MaxBoxAcc quantises it
    (:func:`prepare_wsol_cam`)."""
    return normalize_minmax(resize_cam(cam, frame, cv2.INTER_CUBIC, WSOL_DTYPE), WSOL_DTYPE)


def prepare_wsol_cam(cam, frame):
    """CAM [H, W] → uint8 [frame, frame], computed in float64 as wsolevaluation does.

    The map is converted to float64, resized with ``cv2.INTER_CUBIC``, min-max normalised
    (``cam −= cam.min(); cam /= cam.max()``; a constant map or one with a NaN → zeros) and quantised
    by ``(cam · 255).astype(uint8)``, every step in float64. Bicubic overshoot below the map's
    minimum or above its maximum is absorbed by the min-max. A float32 resize would differ: it
    leaves 1-ulp ripples on a constant map (which the min-max would stretch into a pattern) and
    moves near-constant maps and values at quantisation steps.
    """
    return cam_to_uint8(wsol_scoremap(cam, frame))


def _clip(rects, size):
    x1, y1 = rects[:, 0], rects[:, 1]
    x2 = np.minimum(rects[:, 0] + rects[:, 2], size - 1)
    y2 = np.minimum(rects[:, 1] + rects[:, 3], size - 1)
    return np.stack([x1, y1, x2, y2], axis=1)


def wsol_sweep_ious(u8, thresholds, gt_boxes):
    """Best IoU per threshold for V1 (largest contour) and V2 (all contours): two float64 [T].

    One findContours call per distinct mask serves both versions and every threshold giving that
    mask. u8: uint8 [F, F] (square frame); gt_boxes: int [G, 4] in that frame.
    """
    size = u8.shape[0]
    sw = sweep_contours(u8, [integer_threshold(u8, t) for t in thresholds])
    boxes = _clip(sw.rects, size)
    empty = best_iou(WSOL_FALLBACK_BOX, gt_boxes)
    v2 = best_iou_per_group(boxes, sw.starts, sw.counts, gt_boxes, empty)
    has = sw.largest >= 0
    v1 = np.full(len(sw.largest), empty, dtype=np.float64)
    if has.any():
        v1[has] = box_iou_matrix(boxes[sw.largest[has]], gt_boxes).max(axis=1)
    return v1[sw.mask_of], v2[sw.mask_of]


def wsol_sweep_ious_reference(u8, thresholds, gt_boxes):
    """Straightforward per-threshold, per-version loop (wsolevaluation's structure): two float64 [T]."""
    v1 = [box_iou_matrix(wsol_boxes(u8, t, False), gt_boxes).max() for t in thresholds]
    v2 = [box_iou_matrix(wsol_boxes(u8, t, True), gt_boxes).max() for t in thresholds]
    return np.array(v1, dtype=np.float64), np.array(v2, dtype=np.float64)
