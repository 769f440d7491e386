"""Shared helpers for the evaluation tests: tiny CAM caches, indexes and scores on disk."""

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genpromp.cams.cache import roles_for_mode, shard_filename, write_cam_index, write_cam_shard

__all__ = ["blob_cam", "smooth_random_cam", "write_dataset"]


def blob_cam(size, blobs):
    """Max-normalised CAM [size, size] of rectangles: blobs = [(x1, y1, x2, y2, value)] (inclusive)."""
    cam = np.zeros((size, size), np.float32)
    for x1, y1, x2, y2, v in blobs:
        cam[y1:y2 + 1, x1:x2 + 1] = np.maximum(cam[y1:y2 + 1, x1:x2 + 1], v)
    return cam / max(cam.max(), 1e-12)


def smooth_random_cam(rng, size=64):
    """Pipeline-like CAM: 8×8 and 16×16 random fields resized bicubically, averaged, max-normalised."""
    maps = [cv2.resize(rng.random((s, s)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
            for s in (8, 16, 16)]
    c = np.clip(np.mean(maps, 0), 0, None)
    return c / c.max()


def write_dataset(tmp_path, n=10, n_classes=4, mode="top1", shard_size=4, seed=0):
    """Write a test index, scores and a CAM cache (random + structured maps); return their paths."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i % n_classes}/img_{i:03d}" for i in range(n)]
    labels = [i % n_classes for i in range(n)]
    widths = rng.integers(120, 300, n)
    heights = rng.integers(120, 300, n)
    boxes = []
    for i in range(n):
        w, h = float(widths[i]), float(heights[i])
        bs = [[w * 0.2, h * 0.25, w * 0.7, h * 0.8]]
        if i % 3 == 0:
            bs.append([w * 0.55, h * 0.1, w * 0.95, h * 0.45])
        boxes.append(bs)
    index = tmp_path / "test.parquet"
    pq.write_table(pa.table({"image_id": ids, "path": [f"{i}.jpg" for i in ids],
                             "label": pa.array(labels, pa.int32()), "width": pa.array(widths, pa.int32()),
                             "height": pa.array(heights, pa.int32()),
                             "boxes": pa.array(boxes, pa.list_(pa.list_(pa.float64())))}), index)
    top5 = []
    for i, lab in enumerate(labels):
        order = list(rng.permutation(n_classes))
        if i % 4 != 3:  # mostly right
            order.remove(lab)
            order.insert(0, lab)
        top5.append([int(c) for c in (order * 5)[:5]])
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"image_id": ids, "top5_ids": pa.array(top5, pa.list_(pa.int32())),
                             "top5_scores": pa.array([[0.5] * 5] * n, pa.list_(pa.float32())),
                             "scores": pa.array([[0.1] * n_classes] * n, pa.list_(pa.float32()))}), scores)
    roles = roles_for_mode(mode)
    cams_dir = tmp_path / "cams"
    shards = []
    for s0 in range(0, n, shard_size):
        rows = range(s0, min(n, s0 + shard_size))
        cls, maps = [], []
        for i in rows:
            per_class = {}
            row_c, row_m = [], []
            for role in roles:
                c = labels[i] if role == "gt" else top5[i][int(role[3:]) - 1]
                if c not in per_class:
                    per_class[c] = smooth_random_cam(rng) if (i + c) % 2 else blob_cam(
                        64, [(10 + c, 12, 40, 50, 1.0), (48, 5, 60, 20, 0.6)])
                row_c.append(c)
                row_m.append(per_class[c])
            cls.append(row_c)
            maps.append(row_m)
        p = cams_dir / shard_filename(s0 // shard_size)
        write_cam_shard(p, [ids[i] for i in rows], np.array(cls), np.array(maps))
        shards.append(p)
    write_cam_index(shards, cams_dir / "index.parquet", roles)
    return {"index": index, "scores": scores, "cams": cams_dir, "ids": ids}
