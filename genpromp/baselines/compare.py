"""Overlays of several runs side by side on the same test images (one PNG).

Rows are ``n_images`` test images spread evenly over the index (every class shows); columns are the runs,
in the order given, each cell drawn by :func:`genpromp.cams.overlay.draw_overlay`: the ground-truth-class
map as a heat map, the predicted TS-CAM box (green, at ``cam_thr``) and the GT boxes (red). A header row
names the runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..cams.cache import CamCache
from ..cams.overlay import draw_overlay
from ..data.images import read_rgb
from ..errors import GenprompError
from ..io import atomic_path, resolve_inside

__all__ = ["pick_images", "side_by_side"]

log = logging.getLogger(__name__)

_HEADER = 28


def pick_images(image_ids, n):
    """``n`` ids spread evenly over ``image_ids`` (all when there are fewer)."""
    ids = list(image_ids)
    return [ids[i] for i in sorted({int(k * len(ids) / int(n)) for k in range(int(n))})] if n and ids else []


def _header(labels, cell):
    bar = np.full((_HEADER, cell * len(labels), 3), 255, np.uint8)
    for k, label in enumerate(labels):
        cv2.putText(bar, label, (k * cell + 6, _HEADER - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return bar


def side_by_side(caches, index_path, image_root, out_png, n_images, cam_thr, cell=256, role="gt"):
    """Write the figure: ``caches`` is ``{column label: CAM cache folder}`` (left to right). Returns the
    image ids shown."""
    if not caches:
        raise GenprompError("side-by-side figure: no CAM caches given")
    readers = {label: CamCache(folder) for label, folder in caches.items()}
    index = pd.read_parquet(index_path).set_index("image_id")
    present = [set(r.image_ids) for r in readers.values()]
    shared = [i for i in index.index if all(i in ids for ids in present)]
    ids = pick_images(shared, n_images)
    rows = [_header(list(readers), cell)]
    for image_id in ids:
        rec = index.loc[image_id]
        rgb = read_rgb(resolve_inside(image_root, rec["path"], index_path))
        boxes = np.asarray([list(b) for b in rec["boxes"]], np.float64).reshape(-1, 4)
        cells = [draw_overlay(rgb, reader.get(image_id, role)[1], boxes, cam_thr, cell)[0]
                 for reader in readers.values()]
        rows.append(np.concatenate(cells, axis=1))
    figure = np.concatenate(rows, axis=0)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png, suffix=".png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    log.info("side-by-side figure of %d images x %d runs -> %s", len(ids), len(readers), out_png)
    return ids
