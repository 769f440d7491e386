"""CAM cache: round trip, index, lookup, and errors that name the shard file and row."""

import numpy as np
import pytest

from genpromp.cams.cache import (
    CamCache, read_cam_shard, roles_for_mode, write_cam_index, write_cam_shard,
)
from genpromp.errors import InputError


def _write(tmp_path, k=0, n=3, K=2, s=8, seed=0):
    rng = np.random.default_rng(seed)
    cams = rng.random((n, K, s, s)).astype(np.float32)
    ids = [f"cls/img{k}_{i}" for i in range(n)]
    cls = rng.integers(0, 5, (n, K))
    p = write_cam_shard(tmp_path / f"shard-{k:05d}.npz", ids, cls, cams)
    return p, ids, cls, cams


def test_round_trip_and_lookup(tmp_path):
    p0, ids0, cls0, cams0 = _write(tmp_path, 0)
    p1, ids1, cls1, cams1 = _write(tmp_path, 1, seed=1)
    shard = read_cam_shard(p0)
    assert shard.cams.dtype == np.float16 and shard.class_ids.dtype == np.int32
    assert shard.image_ids.tolist() == ids0
    assert write_cam_index([p1, p0], tmp_path / "index.parquet", roles_for_mode("top1")) == 12
    cache = CamCache(tmp_path)
    assert cache.roles == ["top1", "gt"]
    assert cache.image_ids == ids0 + ids1
    cid, cam = cache.get(ids1[2], "gt")
    assert cid == cls1[2, 1] and cam.dtype == np.float32
    np.testing.assert_array_equal(cam, cams1[2, 1].astype(np.float16).astype(np.float32))
    assert [k for k, _, rows in cache.iter_shards()] == [0, 1]


@pytest.mark.parametrize("bad,what", [("nan", "NaN"), ("neg", "negative"), ("inf", "infinite")])
def test_bad_values_name_file_and_row(tmp_path, bad, what):
    cams = np.ones((3, 1, 4, 4), np.float32)
    cams[2, 0, 1, 1] = {"nan": np.nan, "neg": -0.1, "inf": 1e6}[bad]  # 1e6 overflows float16
    with pytest.raises(InputError) as err:
        write_cam_shard(tmp_path / "shard-00007.npz", ["a", "b", "c"], [[0], [1], [2]], cams)
    msg = str(err.value)
    assert "shard-00007.npz" in msg and "row 2" in msg and "'c'" in msg and what in msg
    assert not (tmp_path / "shard-00007.npz").exists()


def test_wrong_shape_and_name(tmp_path):
    with pytest.raises(InputError, match=r"shape \[N=2, K, S, S\]"):
        write_cam_shard(tmp_path / "shard-00000.npz", ["a", "b"], [[0], [1]], np.ones((2, 1, 4, 5)))
    with pytest.raises(InputError, match="class_ids must have shape"):
        write_cam_shard(tmp_path / "shard-00000.npz", ["a", "b"], [[0, 1], [1, 1]], np.ones((2, 1, 4, 4)))
    with pytest.raises(InputError, match="shard-<k>.npz"):
        write_cam_shard(tmp_path / "cams.npz", ["a"], [[0]], np.ones((1, 1, 4, 4)))


def test_missing_shard_referenced_by_index(tmp_path):
    p0, *_ = _write(tmp_path, 0)
    p1, *_ = _write(tmp_path, 1)
    write_cam_index([p0, p1], tmp_path / "index.parquet", roles_for_mode("top1"))
    p1.unlink()
    with pytest.raises(InputError, match=r"references shard 1 but .*shard-00001.npz does not exist") as err:
        CamCache(tmp_path)
    assert "line 6" in str(err.value)  # first index row of shard 1


def test_tampered_shard_caught_on_read(tmp_path):
    p0, ids, cls, cams = _write(tmp_path, 0)
    write_cam_index([p0], tmp_path / "index.parquet", roles_for_mode("top1"))
    bad = cams.copy()
    bad[1, 0, 0, 0] = np.nan
    np.savez(p0, image_ids=np.array(ids), class_ids=cls.astype(np.int32), cams=bad.astype(np.float16))
    with pytest.raises(InputError, match=r"shard-00000.npz: row 1 .*NaN"):
        CamCache(tmp_path).get(ids[0], "gt")
