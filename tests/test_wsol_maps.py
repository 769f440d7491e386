"""wsolevaluation score maps in and out of the CAM cache: layout, round trip, and equal scores.

The reference scorer below follows wsolevaluation's BoxEvaluator step by step on the .npy files
(map used as stored, ``(map * 255).astype(uint8)``, THRESH_BINARY at int(τ · max), largest or all
contours, x1/y1 clipped to 223, GT boxes rescaled with int(x * 224 / W), inclusive IoU ≥ δ), written
independently of genpromp.evaluation.
"""

import logging

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genpromp.cams.cache import CamCache, write_cam_index, write_cam_shard
from genpromp.cams.wsol_maps import export_wsol_maps, image_id_of, import_wsol_maps
from genpromp.data.indexing import IMAGE_SCHEMA
from genpromp.errors import InputError
from genpromp.evaluation.evaluate import evaluate_cache
from genpromp.evaluation.evaluator import EvalSettings

FRAME = 224
DELTAS = (0.3, 0.5, 0.7)
TAUS = np.arange(0.0, 1.0, 0.01)


def _world(tmp_path, n=7, seed=0):
    """Index with n images of various sizes, one GT box each (two for the last), labels 0..2."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        w, h = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        x1, y1 = float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2))
        boxes = [[x1, y1, float(rng.integers(x1 + 10, w)), float(rng.integers(y1 + 10, h))]]
        if i == n - 1:
            boxes.append([0.0, 0.0, w / 3, h / 3])
        rows.append(dict(image_id=f"{i % 3:03d}.cls/img_{i}", path=f"images/{i % 3:03d}.cls/img_{i}.jpg",
                         label=i % 3, width=w, height=h, boxes=boxes))
    table = pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)
    pq.write_table(table, tmp_path / "test.parquet")
    return tmp_path / "test.parquet", rows


def _blob_maps(rng, n, size, attain_zero=False):
    """n maps [size, size]: one or two Gaussian blobs plus noise, max 1; map 1 is constant, map 2 has min > 0."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    maps = []
    for i in range(n):
        m = np.zeros((size, size))
        for _ in range(1 + i % 2):
            cx, cy, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
            m += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        m += 0.05 * rng.random((size, size))
        if i == 1:
            m[:] = 0.5
        elif i == 2:
            m += 0.3
        if attain_zero and i != 1:
            m -= m.min()
        maps.append(m / m.max())
    return maps


def _write_cache(folder, rows, maps, shard_size=3):
    shards = []
    for k, lo in enumerate(range(0, len(rows), shard_size)):
        part = rows[lo:lo + shard_size]
        cams = np.stack([maps[lo + j] for j in range(len(part))])[:, None]
        shards.append(write_cam_shard(folder / f"shard-{k:05d}.npz", [r["image_id"] for r in part],
                                      [[r["label"]] for r in part], cams))
    write_cam_index(shards, folder / "index.parquet", ("gt",))
    return folder


def _reference_wsolevaluation(map_files, rows):
    """{"v1"|"v2": {δ: number of correct images per τ of TAUS}} from .npy files, wsolevaluation-style."""
    hits = {v: {d: np.zeros(len(TAUS)) for d in DELTAS} for v in ("v1", "v2")}
    for r in rows:
        scoremap = np.load(map_files[r["image_id"]])
        assert scoremap.shape == (FRAME, FRAME)
        u8 = (scoremap * 255).astype(np.uint8)
        gt = np.array([[int(b[0] * FRAME / r["width"]), int(b[1] * FRAME / r["height"]),
                        int(b[2] * FRAME / r["width"]), int(b[3] * FRAME / r["height"])] for b in r["boxes"]])
        for t, tau in enumerate(TAUS):
            _, mask = cv2.threshold(u8, int(tau * np.max(u8)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            for version in ("v1", "v2"):
                if len(contours) == 0:
                    boxes = [[0, 0, 0, 0]]
                else:
                    chosen = contours if version == "v2" else [max(contours, key=cv2.contourArea)]
                    boxes = []
                    for c in chosen:
                        x, y, w, h = cv2.boundingRect(c)
                        boxes.append([x, y, min(x + w, FRAME - 1), min(y + h, FRAME - 1)])
                best = 0.0
                for b in boxes:
                    for g in gt:
                        iw = max(0, min(b[2], g[2]) - max(b[0], g[0]) + 1)
                        ih = max(0, min(b[3], g[3]) - max(b[1], g[1]) + 1)
                        inter = iw * ih
                        union = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
                        best = max(best, inter / union if union > 0 else 0.0)
                for d in DELTAS:
                    hits[version][d][t] += best >= d
    return hits


def _settings():
    return EvalSettings(cam_thr=0.23, wsol_frame=FRAME, thresholds=tuple(TAUS.tolist()), iou_thresholds=DELTAS,
                        protocols=("tscam", "wsol"))


def _assert_same_scores(summary, reference):
    """Same number of correct images at every (version, δ, τ), hence the same MaxBoxAcc (up to the last
    bit of the percentage, which wsolevaluation computes as hits · 100 / n)."""
    n = summary["n_images"]
    for v in ("v1", "v2"):
        for d in DELTAS:
            got = np.rint(np.asarray(summary["wsol"][v]["curve"][f"{d:g}"]) * n / 100.0)
            assert np.array_equal(got, reference[v][d]), (v, d)
            assert summary["wsol"][v]["max_box_acc"][f"{d:g}"] == pytest.approx(reference[v][d].max() * 100.0 / n,
                                                                               rel=1e-12)


def test_exported_maps_score_as_the_cache(tmp_path):
    index, rows = _world(tmp_path)
    cache = _write_cache(tmp_path / "cams", rows, _blob_maps(np.random.default_rng(1), len(rows), 64))
    written = export_wsol_maps(cache, tmp_path / "scoremaps", index_path=index, size=FRAME)
    # wsolevaluation's layout: <root>/<image path as listed, with extension>.npy
    assert sorted(written) == sorted(r["image_id"] for r in rows)
    for r in rows:
        f = tmp_path / "scoremaps" / f"{r['image_id']}.jpg.npy"
        assert written[r["image_id"]] == f and f.is_file()
        m = np.load(f)
        assert m.dtype == np.float64 and m.shape == (FRAME, FRAME)
    assert np.all(np.load(written[rows[1]["image_id"]]) == 0)           # a constant map exports as zeros
    m2 = np.load(written[rows[2]["image_id"]])
    assert m2.min() == 0.0 and m2.max() == 1.0                          # min-max normalised like wsolevaluation
    summary = evaluate_cache(cache, index, _settings()).compute()
    reference = _reference_wsolevaluation(written, rows)
    assert reference["v2"][0.5].max() > 0                               # a non-trivial comparison
    _assert_same_scores(summary, reference)


def test_imported_maps_score_as_the_files(tmp_path):
    index, rows = _world(tmp_path, seed=2)
    maps = [m.astype(np.float16).astype(np.float64) for m in
            _blob_maps(np.random.default_rng(3), len(rows), FRAME, attain_zero=True)]
    maps[1] = np.zeros((FRAME, FRAME))       # wsolevaluation's form of a constant map
    files = {}
    for r, m in zip(rows, maps):
        f = tmp_path / "maps" / f"{r['image_id']}.JPEG.npy"
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, m)
        files[r["image_id"]] = f
    assert import_wsol_maps(tmp_path / "maps", index, tmp_path / "cams", shard_size=4) == len(rows)
    cache = CamCache(tmp_path / "cams")
    assert cache.roles == ["gt"] and cache.shard_numbers() == [0, 1]
    for r, m in zip(rows, maps):
        cid, cam = cache.get(r["image_id"], "gt")
        assert cid == r["label"] and np.array_equal(cam, m.astype(np.float32))
    summary = evaluate_cache(tmp_path / "cams", index, _settings()).compute()
    _assert_same_scores(summary, _reference_wsolevaluation(files, rows))


def test_round_trip_cache_to_maps_to_cache(tmp_path):
    index, rows = _world(tmp_path, seed=4)
    maps = _blob_maps(np.random.default_rng(5), len(rows), FRAME, attain_zero=True)
    maps[1] = np.zeros((FRAME, FRAME))
    cache = _write_cache(tmp_path / "a", rows, maps)
    export_wsol_maps(cache, tmp_path / "maps", index_path=index, size=FRAME)
    import_wsol_maps(tmp_path / "maps", index, tmp_path / "b", shard_size=3)
    a, b = CamCache(tmp_path / "a"), CamCache(tmp_path / "b")
    assert a.image_ids == b.image_ids
    for k in a.shard_numbers():
        sa, sb = a.load_shard(k), b.load_shard(k)
        assert np.array_equal(sa.image_ids, sb.image_ids) and np.array_equal(sa.class_ids, sb.class_ids)
        assert sa.cams.dtype == sb.cams.dtype == np.float16 and np.array_equal(sa.cams, sb.cams)
    # and back out again: the same files
    export_wsol_maps(tmp_path / "b", tmp_path / "maps2", index_path=index, size=FRAME)
    for r in rows:
        rel = f"{r['image_id']}.jpg.npy"
        assert np.array_equal(np.load(tmp_path / "maps" / rel), np.load(tmp_path / "maps2" / rel))


def test_export_at_original_size_and_import_with_resize(tmp_path):
    index, rows = _world(tmp_path, n=3, seed=6)
    cache = _write_cache(tmp_path / "cams", rows, _blob_maps(np.random.default_rng(7), 3, 32))
    written = export_wsol_maps(cache, tmp_path / "orig", index_path=index, size="original", extension="")
    for r in rows:
        assert written[r["image_id"]] == tmp_path / "orig" / f"{r['image_id']}.npy"
        assert np.load(written[r["image_id"]]).shape == (r["height"], r["width"])
    with pytest.raises(InputError, match="not square"):
        import_wsol_maps(tmp_path / "orig", index, tmp_path / "x")
    import_wsol_maps(tmp_path / "orig", index, tmp_path / "c64", cam_size=64)
    _, cam = CamCache(tmp_path / "c64").get(rows[0]["image_id"], "gt")
    assert cam.shape == (64, 64) and cam.max() == 1.0 and cam.min() >= 0


def test_image_id_of():
    assert image_id_of("val/ILSVRC2012_val_00000001.JPEG") == "val/ILSVRC2012_val_00000001"
    assert image_id_of("001.Black_footed_Albatross/x_1.jpg") == "001.Black_footed_Albatross/x_1"
    assert image_id_of("001.Black_footed_Albatross/x_1") == "001.Black_footed_Albatross/x_1"


def _maps_for(tmp_path, rows, value=None):
    for r in rows:
        f = tmp_path / "maps" / f"{r['image_id']}.jpg.npy"
        f.parent.mkdir(parents=True, exist_ok=True)
        m = np.zeros((8, 8))
        m[2:5, 2:5] = 1.0
        np.save(f, m)
    return tmp_path / "maps"


@pytest.mark.parametrize("bad, pattern", [
    (np.full((8, 8), 1.5), r"span \[1.5, 1.5\]"),
    (np.full((8, 8), np.nan), "NaN or infinite"),
    (np.zeros((2, 8, 8)), "2-D array"),
    (np.zeros((8, 8), np.int64), "floating point"),
    (np.array([{"a": 1}], dtype=object), "cannot read score map"),
])
def test_bad_map_is_refused_naming_the_file(tmp_path, bad, pattern):
    index, rows = _world(tmp_path, n=3)
    root = _maps_for(tmp_path, rows)
    target = root / f"{rows[1]['image_id']}.jpg.npy"
    np.save(target, bad, allow_pickle=True)
    with pytest.raises(InputError, match=pattern) as err:
        import_wsol_maps(root, index, tmp_path / "cams")
    assert err.value.path == str(target)
    assert not (tmp_path / "cams").exists()


def test_missing_duplicate_and_extra_maps(tmp_path, caplog):
    index, rows = _world(tmp_path, n=3)
    root = _maps_for(tmp_path, rows)
    (root / f"{rows[2]['image_id']}.jpg.npy").unlink()
    with pytest.raises(InputError, match=r"no score map for 1 of 3 test images .*img_2") as err:
        import_wsol_maps(root, index, tmp_path / "cams")
    assert "img_2.jpg.npy" in str(err.value)
    np.save(root / f"{rows[2]['image_id']}.jpg.npy", np.eye(8))
    np.save(root / f"{rows[2]['image_id']}.png.npy", np.eye(8))
    with pytest.raises(InputError, match="two score maps"):
        import_wsol_maps(root, index, tmp_path / "cams")
    (root / f"{rows[2]['image_id']}.png.npy").unlink()
    (root / "other").mkdir()
    np.save(root / "other" / "stray.npy", np.eye(8))
    with caplog.at_level(logging.WARNING):
        assert import_wsol_maps(root, index, tmp_path / "cams") == 3
    assert "1 score maps are not test images" in caplog.text and "other/stray" in caplog.text
