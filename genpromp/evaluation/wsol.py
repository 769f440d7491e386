"""wsolevaluation protocol (Choe et al. CVPR'20) for one image: MaxBoxAcc (V1) and MaxBoxAccV2.

CAM → bicubic resize to the frame (224) → min-max (constant or NaN → zeros) → uint8 → for each τ
THRESH_BINARY at int(τ·max) → boxes of all contours (V2) or the largest (V1), x2, y2 clipped to
size − 1, none → ``[0, 0, 0, 0]`` → best inclusive IoU over boxes × GT boxes.
"""

from __future__ import annotations

import cv2
import numpy as np

from .metrics import (
    WSOL_FALLBACK_BOX, box_iou_matrix, integer_threshold, prepare_cam, sweep_contour_rects, wsol_boxes,
)

__all__ = ["prepare_wsol_cam", "wsol_sweep_ious", "wsol_sweep_ious_reference"]


def prepare_wsol_cam(cam, frame):
    """CAM [H, W] → uint8 [frame, frame] (bicubic resize, min-max, ×255 truncated)."""
    return prepare_cam(cam, frame, cv2.INTER_CUBIC)


def _clip(rects, size):
    x1, y1 = rects[:, 0], rects[:, 1]
    x2 = np.minimum(rects[:, 0] + rects[:, 2], size - 1)
    y2 = np.minimum(rects[:, 1] + rects[:, 3], size - 1)
    return np.stack([x1, y1, x2, y2], axis=1)


def wsol_sweep_ious(u8, thresholds, gt_boxes):
    """Best IoU per threshold for V1 (largest contour) and V2 (all contours): two float64 [T].

    One findContours call per distinct mask serves both versions. u8: uint8 [F, F] (square frame);
    gt_boxes: int [G, 4] in that frame.
    """
    size = u8.shape[0]
    cuts = [integer_threshold(u8, t) for t in thresholds]
    v1 = np.empty((len(cuts), 4), dtype=np.int64)
    parts, counts = [], []
    for i, (rects, largest) in enumerate(sweep_contour_rects(u8, cuts)):
        if largest < 0:
            v1[i] = WSOL_FALLBACK_BOX
            parts.append(np.array([WSOL_FALLBACK_BOX], dtype=np.int64))
        else:
            boxes = _clip(rects, size)
            v1[i] = boxes[largest]
            parts.append(boxes)
        counts.append(len(parts[-1]))
    all_best = box_iou_matrix(np.concatenate(parts), gt_boxes).max(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    v2 = np.maximum.reduceat(all_best, starts)
    return box_iou_matrix(v1, gt_boxes).max(axis=1), v2


def wsol_sweep_ious_reference(u8, thresholds, gt_boxes):
    """Straightforward per-threshold, per-version loop (wsolevaluation's structure): two float64 [T]."""
    v1 = [box_iou_matrix(wsol_boxes(u8, t, False), gt_boxes).max() for t in thresholds]
    v2 = [box_iou_matrix(wsol_boxes(u8, t, True), gt_boxes).max() for t in thresholds]
    return np.array(v1, dtype=np.float64), np.array(v2, dtype=np.float64)
