"""Visual check of a CAM cache: heat map over the image, the predicted TS-CAM box and the GT boxes.

For ``n_vis`` images spread evenly over a variant's cache (so every class shows), the ground-truth-class map (role ``gt``) is drawn over
the image in the TS-CAM frame; the predicted box (TS-CAM protocol at the dataset's ``cam_thr``, boxes
from ``genpromp.evaluation``) is green, the GT boxes red. One PNG per image, named after the image id.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..data.images import read_rgb
from ..evaluation.metrics import scale_boxes_tscam, tscam_box
from ..evaluation.tscam import prepare_tscam_cam
from ..io import atomic_dir, resolve_inside
from .cache import CamCache

__all__ = ["PRED_COLOR", "GT_COLOR", "draw_overlay", "overlay_name", "write_overlays"]

log = logging.getLogger(__name__)

PRED_COLOR = (0, 255, 0)   # RGB: predicted box
GT_COLOR = (255, 0, 0)     # RGB: ground-truth boxes


def draw_overlay(rgb, cam, gt_boxes, cam_thr, frame, alpha=0.5):
    """uint8 RGB [frame, frame, 3]: ``rgb`` (uint8 [H, W, 3]) resized, jet heat map of ``cam`` [S, S] blended,
    predicted TS-CAM box (PRED_COLOR) and GT boxes (original pixels x1y1x2y2, drawn in GT_COLOR).

    Returns (image, predicted box int [4] in frame pixels, inclusive).
    """
    h, w = rgb.shape[:2]
    base = cv2.resize(rgb, (frame, frame), interpolation=cv2.INTER_LINEAR)
    u8 = prepare_tscam_cam(cam, frame)
    heat = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(base, 1 - alpha, heat, alpha, 0)
    box = np.asarray(tscam_box(u8, cam_thr), dtype=np.int64)
    thick = max(1, frame // 256)
    for g in scale_boxes_tscam(gt_boxes, w, h, frame) if len(gt_boxes) else []:
        cv2.rectangle(out, (int(g[0]), int(g[1])), (int(g[2]), int(g[3])), GT_COLOR, thick)
    cv2.rectangle(out, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), PRED_COLOR, thick)
    return out, box


def overlay_name(image_id):
    """File name of an image's overlay: the id with '/' replaced by '__', plus .png."""
    return str(image_id).replace("/", "__") + ".png"


def _write_index_html(path, names, cam_thr):
    """A page showing every overlay, with the colour legend."""
    items = "\n".join(f'<figure><img src="{html.escape(n)}" width="256"><figcaption>{html.escape(n[:-4])}'
                      f"</figcaption></figure>" for n in names)
    path.write_text(f"<!doctype html><title>CAM overlays</title><p>heat map: ground-truth-class CAM; "
                    f"<b style='color:rgb{GT_COLOR}'>GT boxes</b>; <b style='color:rgb{PRED_COLOR}'>predicted box"
                    f"</b> (TS-CAM, cam_thr {cam_thr})</p>\n{items}\n")


def write_overlays(cache_dir, index_path, dataset_root, out_dir, n_vis, cam_thr, frame=512, role="gt"):
    """Draw overlays for ``n_vis`` evenly spaced images of the cache into ``out_dir`` (written atomically),
    plus an ``index.html`` that shows them.

    index_path: the dataset's test index parquet (paths, sizes, boxes). Returns the list of PNG names.
    """
    cache = CamCache(cache_dir)
    index = pd.read_parquet(index_path).set_index("image_id")
    names = []
    with atomic_dir(out_dir) as tmp:
        ids = list(cache.image_ids)
        picks = sorted({int(i * len(ids) / int(n_vis)) for i in range(int(n_vis))}) if n_vis and ids else []
        for image_id in [ids[i] for i in picks]:
            rec = index.loc[image_id]
            rgb = read_rgb(resolve_inside(dataset_root, rec["path"], index_path))
            _, cam = cache.get(image_id, role)
            boxes = np.asarray([list(b) for b in rec["boxes"]], dtype=np.float64).reshape(-1, 4)
            img, _ = draw_overlay(rgb, cam, boxes, cam_thr, frame)
            name = overlay_name(image_id)
            if not cv2.imwrite(str(Path(tmp) / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {Path(out_dir) / name}")
            names.append(name)
        _write_index_html(Path(tmp) / "index.html", names, cam_thr)
    log.info("%d overlays -> %s", len(names), out_dir)
    return names
