"""Where a CAM cache's maps peak: inside the object's discriminative part, elsewhere on the object, or off it.

Input: a CAM cache, the test index (image sizes and object boxes) and a part-box listing (``part_boxes.txt``
of a part-world demo dataset: one line ``<image path> x1 y1 x2 y2`` per image, the path relative to the
dataset's image folder, pixels of the image, ``x2``/``y2`` exclusive). Per image, for the map of ``role``
(default the ground-truth class), resized to the image's own size (bilinear):

* ``peak_in_part`` / ``peak_in_object``: whether the map's maximum lies inside the part box / an object box;
* ``part_mass``: the share of the map's mass (min-max normalised map) inside the object box that lies
  inside the part box; ``part_area``: the part box's share of the object box's area (what ``part_mass`` is
  for a map that is flat over the object).

A map that follows the whole object has ``part_mass`` near ``part_area``; a part detector's is far above it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..cams.cache import CamCache
from ..errors import InputError
from ..io import write_text_atomic

__all__ = ["image_peaks", "map_peaks", "read_part_boxes", "write_map_peaks"]


def read_part_boxes(path):
    """``{image id (the listed path without its extension): [x1, y1, x2, y2]}`` of a part-box listing."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "part-box listing not found; only a demo.world parts dataset has one")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise InputError(path, f"expected '<image path> x1 y1 x2 y2', got {line!r}", n)
        try:
            out[fields[0].rsplit(".", 1)[0]] = [float(v) for v in fields[1:]]
        except ValueError:
            raise InputError(path, f"box values must be numbers, got {line!r}", n) from None
    return out


def _inside(x, y, box):
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def _box_sum(cam, box):
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    return float(cam[y1:int(np.ceil(box[3])), x1:int(np.ceil(box[2]))].sum())


def image_peaks(cam, width, height, object_boxes, part_box):
    """One image's record (see the module doc): ``cam`` [S, S], image ``width`` x ``height``."""
    full = cv2.resize(np.asarray(cam, np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(full.min()), float(full.max())
    full = (full - lo) / (hi - lo) if hi > lo else np.zeros_like(full)
    y, x = np.unravel_index(int(np.argmax(full)), full.shape)
    px, py = x + 0.5, y + 0.5
    obj = max(object_boxes, key=lambda b: _inside(px, py, b))  # the box holding the peak, if any
    obj_mass = _box_sum(full, obj)
    area = (obj[2] - obj[0]) * (obj[3] - obj[1])
    part_area = max(0.0, min(part_box[2], obj[2]) - max(part_box[0], obj[0])) * \
        max(0.0, min(part_box[3], obj[3]) - max(part_box[1], obj[1]))
    return {"peak_x": float(px), "peak_y": float(py), "peak_in_part": bool(_inside(px, py, part_box)),
            "peak_in_object": any(_inside(px, py, b) for b in object_boxes),
            "part_mass": _box_sum(full, part_box) / obj_mass if obj_mass > 0 else 0.0,
            "part_area": part_area / area if area > 0 else 0.0}


def map_peaks(cache_dir, index_path, part_boxes_path, role="gt"):
    """``{"n_images", "peak_in_part", "peak_in_object", "part_mass", "part_area", "per_image": [...]}``:
    shares (%) and means over the cache's images; per_image holds each image's record with its id."""
    cache = CamCache(cache_dir)
    index = pd.read_parquet(index_path, columns=["image_id", "width", "height", "boxes"]).set_index("image_id")
    parts = read_part_boxes(part_boxes_path)
    rows = []
    for image_id in cache.image_ids:
        if image_id not in parts:
            raise InputError(part_boxes_path, f"no part box for test image {image_id!r}")
        rec = index.loc[image_id]
        _, cam = cache.get(image_id, role)
        boxes = [list(b) for b in rec["boxes"]]
        rows.append({"image_id": image_id, **image_peaks(cam, rec["width"], rec["height"], boxes, parts[image_id])})
    n = len(rows)
    share = lambda key: 100.0 * sum(r[key] for r in rows) / n if n else 0.0
    mean = lambda key: float(np.mean([r[key] for r in rows])) if n else 0.0
    return {"n_images": n, "role": role, "peak_in_part": share("peak_in_part"), "peak_in_object": share("peak_in_object"),
            "part_mass": mean("part_mass"), "part_area": mean("part_area"), "per_image": rows}


def write_map_peaks(cache_dir, index_path, part_boxes_path, out_path, meta=None):
    """:func:`map_peaks` of a cache, with ``meta`` (dataset, run, variant), written as JSON atomically."""
    result = {**(meta or {}), **map_peaks(cache_dir, index_path, part_boxes_path)}
    write_text_atomic(out_path, json.dumps(result, indent=1) + "\n")
    return result
