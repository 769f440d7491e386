"""TS-CAM / GenPromp evaluation protocol for one image ("TS-CAM style").

CAM → bilinear resize to the frame (512) → min-max → uint8 (all in float32) → THRESH_TOZERO at int(thr·max) →
largest contour's bounding rect ``[x, y, x+w, y+h]`` (fallback ``[0, 0, 1, 1]``) → inclusive IoU,
max over GT boxes. Boxes are x1y1x2y2 in frame pixels, inclusive.
"""

from __future__ import annotations

import cv2
import numpy as np

from .metrics import (
    TSCAM_FALLBACK_BOX, box_iou_matrix, integer_threshold, prepare_cam, sweep_contours, tscam_box,
)

__all__ = ["TSCAM_DTYPE", "prepare_tscam_cam", "tscam_sweep_boxes", "tscam_sweep_boxes_reference", "tscam_sweep_ious"]


#: Precision of GenPromp's map pipeline: its CAMs are float32 arrays, resized and normalised as such.
TSCAM_DTYPE = np.float32


def prepare_tscam_cam(cam, frame):
    """CAM [H, W] → uint8 [frame, frame], computed in float32 as GenPromp's evaluation does.

    ``cv2.resize`` (bilinear, its default) of the float32 map, ``(cam − min) / (max − min)`` in
    float32, then ``(cam · 255).astype(uint8)``. A constant map (where GenPromp would divide 0 by 0)
    becomes all zeros, hence no contour and the fallback box.
    """
    return prepare_cam(cam, frame, cv2.INTER_LINEAR, TSCAM_DTYPE)


def tscam_sweep_boxes(u8, thresholds):
    """TS-CAM boxes at every threshold in one pass: int64 [T, 4] (x1y1x2y2, inclusive, unclipped).

    Equal to ``[tscam_box(u8, t) for t in thresholds]`` (see :func:`tscam_sweep_boxes_reference`).
    """
    cuts = [integer_threshold(u8, t) for t in thresholds]
    sw = sweep_contours(u8, cuts)
    per_mask = np.tile(np.asarray(TSCAM_FALLBACK_BOX, dtype=np.int64), (len(sw.largest), 1))
    has = sw.largest >= 0
    r = sw.rects[sw.largest[has]]
    per_mask[has] = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)
    return per_mask[sw.mask_of]


def tscam_sweep_boxes_reference(u8, thresholds):
    """Straightforward per-threshold loop (the reference the fast sweep must equal): int64 [T, 4]."""
    return np.array([tscam_box(u8, t) for t in thresholds], dtype=np.int64).reshape(-1, 4)


def tscam_sweep_ious(boxes, gt_boxes):
    """Best inclusive IoU of each box [T, 4] over the GT boxes [G, 4]: float64 [T]."""
    return box_iou_matrix(boxes, gt_boxes).max(axis=1)
