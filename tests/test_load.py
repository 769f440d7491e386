"""Load: ImageNet-sized inputs stream through `genpromp import-scores` and `genpromp evaluate` in bounded memory.

* A generated 50,000-image test index over 1,000 classes (``test.parquet`` + ``classes.parquet``
  written directly with pyarrow) and a 50,000 × 1,000 score JSON in the original format (~380 MB)
  → ``genpromp import-scores`` in a subprocess: peak RSS < 4 GB (``json.load`` alone would need
  ~10 GB for 50 M Python floats).
* A generated CAM cache of 50,000 images × 1 map (gtk mode) at cam_size 16 in 10 shards →
  ``genpromp evaluate`` in a subprocess: peak RSS < 4 GB. To keep the run short on 2 shared cores
  the evaluation frames are small (``--frame 64 --wsol-frame 64``) and the sweeps coarse
  (4 thresholds, one IoU threshold); memory does not depend on those (maps are resized one at a
  time), only the CPU time does.

Peak RSS is measured by a small wrapper process around the command (``RUSAGE_CHILDREN`` of the
wrapper = the command's own peak, not polluted by other children of the test process) and printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genpromp.cams.cache import roles_for_mode, shard_filename, write_cam_index, write_cam_shard
from genpromp.data.indexing import CLASS_SCHEMA, IMAGE_SCHEMA

N_IMAGES = 50_000
N_CLASSES = 1_000
LIMIT_BYTES = 4 << 30
CAM_SHARD = 5_000

# Runs the command and prints its peak RSS in bytes (Linux reports ru_maxrss in KiB) as the last line.
_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(rc)")


def run_measured(args, timeout=600):
    """Run ``genpromp <args>`` in a subprocess; return (peak RSS bytes, seconds). Fails on exit status ≠ 0."""
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "genpromp.cli", *map(str, args)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    return int(proc.stdout.strip().splitlines()[-1]), seconds


def _image_ids(n):
    return [f"n{i % N_CLASSES:08d}/ILSVRC2012_val_{i:08d}" for i in range(n)]


def write_index(folder, n=N_IMAGES, n_classes=N_CLASSES, seed=0):
    """test.parquet (n images, one box each) and classes.parquet (n_classes) in the FORMATS.md schemas."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _image_ids(n)
    w = rng.integers(100, 500, n).astype(np.int32)
    h = rng.integers(100, 500, n).astype(np.int32)
    x1, y1 = w * rng.uniform(0, 0.4, n), h * rng.uniform(0, 0.4, n)
    x2, y2 = x1 + w * rng.uniform(0.2, 0.6, n), y1 + h * rng.uniform(0.2, 0.6, n)
    flat = pa.array(np.stack([x1, y1, x2, y2], 1).reshape(-1), pa.float64())
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * n + 1, 4, dtype=np.int32)), flat)
    boxes = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), inner)
    test = pa.Table.from_arrays([pa.array(ids), pa.array([f"val/{i}.JPEG" for i in ids]),
                                 pa.array(np.arange(n) % n_classes, pa.int32()), pa.array(w), pa.array(h), boxes],
                                schema=IMAGE_SCHEMA)
    pq.write_table(test, folder / "test.parquet")
    names = [f"class_{c}" for c in range(n_classes)]
    classes = pa.Table.from_arrays([pa.array(np.arange(n_classes), pa.int32()), pa.array(names), pa.array(names),
                                    pa.array([f"n{c:08d}" for c in range(n_classes)]), pa.array(["thing"] * n_classes),
                                    pa.array([f"<imagenet-{c}>" for c in range(n_classes)]),
                                    pa.array([True] * n_classes)], schema=CLASS_SCHEMA)
    pq.write_table(classes, folder / "classes.parquet")
    return ids


def write_score_json(path, ids, n_classes=N_CLASSES, n_patterns=64, seed=0):
    """The original format {"<id>.JPEG": {"pred_scores": [C floats]}, ...}, streamed to disk.

    Rows cycle through ``n_patterns`` pre-formatted score vectors (writing 50 M distinct floats as
    text would take longer than the import); row i uses pattern i % n_patterns."""
    rng = np.random.default_rng(seed)
    patterns = [", ".join(f"{v:.5f}" for v in rng.random(n_classes)) for _ in range(n_patterns)]
    with open(path, "w") as fh:
        fh.write("{\n")
        for i, iid in enumerate(ids):
            sep = ",\n" if i + 1 < len(ids) else "\n"
            fh.write(f'"{iid}.JPEG": {{"pred_scores": [{patterns[i % n_patterns]}]}}{sep}')
        fh.write("}\n")
    return patterns


@pytest.mark.slow
def test_import_scores_50k_by_1000_streams(tmp_path):
    ids = write_index(tmp_path / "index")
    src = tmp_path / "scores.json"
    patterns = write_score_json(src, ids)
    out = tmp_path / "scores" / "cls.parquet"
    rss, seconds = run_measured(["import-scores", src, "--index", tmp_path / "index", "--out", out])
    size = src.stat().st_size
    print(f"\nimport-scores: {N_IMAGES} x {N_CLASSES} scores, JSON {size / 2**20:.0f} MiB: "
          f"peak RSS {rss / 2**20:.0f} MiB, {seconds:.1f} s")
    assert rss < LIMIT_BYTES, f"import-scores peaked at {rss / 2**30:.2f} GiB"
    table = pq.read_table(out)
    assert table.num_rows == N_IMAGES and table.column("image_id").to_pylist()[:2] == ids[:2]
    for row in (0, 1, N_IMAGES - 1):     # spot checks against the pattern each row was written with
        want = np.array([float(v) for v in patterns[row % len(patterns)].split(", ")], np.float32)
        got = np.asarray(table.column("scores")[row].as_py(), np.float32)
        assert np.array_equal(got, want)
        assert table.column("top5_ids")[row].as_py() == np.argsort(-want, kind="stable")[:5].tolist()


def write_cam_cache(folder, ids, seed=0, cam_size=16):
    """gtk-mode cache (K = 1) of ``ids`` in shards of CAM_SHARD images; maps max-normalised."""
    rng = np.random.default_rng(seed)
    shards = []
    for k, lo in enumerate(range(0, len(ids), CAM_SHARD)):
        part = ids[lo:lo + CAM_SHARD]
        cams = rng.random((len(part), 1, cam_size, cam_size), dtype=np.float32)
        cams /= cams.max(axis=(2, 3), keepdims=True)
        labels = (np.arange(lo, lo + len(part)) % N_CLASSES)[:, None]
        shards.append(write_cam_shard(folder / shard_filename(k), part, labels, cams))
    write_cam_index(shards, folder / "index.parquet", roles_for_mode("gtk"))
    return shards


@pytest.mark.slow
def test_evaluate_50k_cache_streams(tmp_path):
    ids = write_index(tmp_path / "index")
    shards = write_cam_cache(tmp_path / "cams", ids)
    out = tmp_path / "eval"
    rss, seconds = run_measured(["evaluate", "--cams", tmp_path / "cams", "--index", tmp_path / "index/test.parquet",
                                 "--per-image", out / "per_image.parquet", "--summary", out / "summary.json",
                                 "--frame", "64", "--wsol-frame", "64", "--sweep", "0", "1", "0.25",
                                 "--tscam-sweep", "0", "1", "0.25", "--iou-thresholds", "0.5"])
    cache_mib = sum(p.stat().st_size for p in shards) / 2**20
    print(f"\nevaluate: {N_IMAGES} images x 1 map at 16x16 in {len(shards)} shards ({cache_mib:.0f} MiB): "
          f"peak RSS {rss / 2**20:.0f} MiB, {seconds:.1f} s")
    assert rss < LIMIT_BYTES, f"evaluate peaked at {rss / 2**30:.2f} GiB"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == N_IMAGES
    assert pq.read_metadata(out / "per_image.parquet").num_rows == N_IMAGES
