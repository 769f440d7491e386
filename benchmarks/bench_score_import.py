"""Benchmark: streaming score import vs the naive ``json.load`` baseline (50,000 images × 1000 classes).

Generates the reference-format JSON (~500 MB, 6-decimal scores as a classifier would dump them)
and a matching index in a temp dir, then runs, each in a fresh child process so peak RSS is its
own: (1) ours = ``genpromp.data.scores.import_scores`` (JSON → parquet), (2) baseline =
``json.load`` + per-image numpy arrays + the same parquet writer, and (3) when the ``ijson`` package
is importable (it is not a dependency), ``ijson.kvitems`` with its C backend feeding the same
checks and writer. Prints seconds, peak RSS and the ratios to ours. Usage:
``python benchmarks/bench_score_import.py [--images 50000] [--classes 1000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_json(path, n_images, n_classes, seed=0):
    """Vectorised writer of {"n00000000/img_<i>": {"pred_scores": [0.dddddd, ...]}}."""
    rng = np.random.default_rng(seed)
    digits = 10 ** np.arange(5, -1, -1)
    with open(path, "wb") as fh:
        fh.write(b"{")
        for start in range(0, n_images, 1000):
            n = min(1000, n_images - start)
            vals = rng.integers(0, 1_000_000, (n, n_classes))
            chars = np.empty((n, n_classes, 10), np.uint8)
            chars[..., 0], chars[..., 1] = ord("0"), ord(".")
            chars[..., 2:8] = (vals[..., None] // digits) % 10 + ord("0")
            chars[..., 8], chars[..., 9] = ord(","), ord(" ")
            for k in range(n):
                i = start + k
                sep = b", " if i else b""
                body = chars[k].tobytes()[:-2]
                fh.write(sep + f'"n{i % 1000:08d}/img_{i}": {{"pred_scores": ['.encode() + body + b"]}")
        fh.write(b"}")


def write_index(index_dir, n_images, n_classes):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from genpromp.data.indexing import CLASS_SCHEMA, IMAGE_SCHEMA
    index_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"n{i % 1000:08d}/img_{i}" for i in range(n_images)]
    n = n_images
    pq.write_table(pa.table({"image_id": ids, "path": [f"val/{i}.JPEG" for i in ids],
                             "label": pa.array(np.zeros(n, np.int32)), "width": pa.array(np.full(n, 10, np.int32)),
                             "height": pa.array(np.full(n, 10, np.int32)), "boxes": [[[0.0, 0.0, 1.0, 1.0]]] * n},
                            schema=IMAGE_SCHEMA), index_dir / "test.parquet")
    c = n_classes
    pq.write_table(pa.table({"class_id": pa.array(np.arange(c, dtype=np.int32)), "name": [str(i) for i in range(c)],
                             "synonyms": [str(i) for i in range(c)], "wnid": [""] * c, "meta_token": ["x"] * c,
                             "concept_token": [f"<t-{i}>" for i in range(c)], "kept": [True] * c},
                            schema=CLASS_SCHEMA), index_dir / "classes.parquet")


def run_ours(json_path, index_dir, out):
    from genpromp.data.scores import import_scores
    import_scores(json_path, index_dir, out)


def run_baseline(json_path, index_dir, out):
    import pyarrow.parquet as pq
    from genpromp.data.scores import ScoreTable, write_scores
    ids = pq.read_table(index_dir / "test.parquet", columns=["image_id"]).column(0).to_pylist()
    with open(json_path) as fh:
        data = json.load(fh)
    scores = np.stack([np.asarray(data[i]["pred_scores"], np.float32) for i in ids])
    write_scores(ScoreTable(ids, scores), out)


def run_ijson(json_path, index_dir, out):
    import ijson
    import pyarrow.parquet as pq
    from genpromp.data.scores import collect_scores, write_scores
    ids = pq.read_table(index_dir / "test.parquet", columns=["image_id"]).column(0).to_pylist()
    n_classes = pq.read_metadata(index_dir / "classes.parquet").num_rows
    with open(json_path, "rb") as fh:
        entries = ((key, np.asarray(value["pred_scores"], np.float64), None)
                   for key, value in ijson.kvitems(fh, "", use_float=True))
        table = collect_scores(entries, ids, n_classes, json_path)
    write_scores(table, out)


RUNNERS = {"ours": run_ours, "json.load": run_baseline, "ijson": run_ijson}


def child(mode, json_path, index_dir, out):
    t0 = time.perf_counter()
    RUNNERS[mode](Path(json_path), Path(index_dir), Path(out))
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_mb}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--skip-baseline", action="store_true", help="only time ours")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "JSON", "INDEX", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_json(tmp / "scores.json", args.images, args.classes)
        write_index(tmp / "index", args.images, args.classes)
        size_mb = (tmp / "scores.json").stat().st_size / 2**20
        print(f"generated {args.images} x {args.classes} JSON ({size_mb:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        results = {}
        modes = ("ours",) + (() if args.skip_baseline else ("json.load",))
        modes += ("ijson",) if importlib.util.find_spec("ijson") is not None else ()
        for mode in modes:
            proc = subprocess.run([sys.executable, __file__, "--child", mode,
                                   str(tmp / "scores.json"), str(tmp / "index"), str(tmp / f"{mode}.parquet")],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:])
                raise SystemExit(f"{mode} failed")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{mode:10s}: {results[mode]['seconds']:7.1f} s   peak RSS {results[mode]['peak_rss_mb']:7.0f} MiB")
        if "json.load" in results:
            import pandas as pd
            a, b = pd.read_parquet(tmp / "ours.parquet"), pd.read_parquet(tmp / "json.load.parquet")
            same = a["image_id"].equals(b["image_id"]) and all(np.array_equal(x, y) for x, y in zip(a["scores"][:500], b["scores"][:500]))
            r, o = results["json.load"], results["ours"]
            print(f"ratio (json.load / ours): time {r['seconds'] / o['seconds']:.2f}x, "
                  f"peak RSS {r['peak_rss_mb'] / o['peak_rss_mb']:.2f}x; outputs identical: {same}")
        if "ijson" in results:
            r, o = results["ijson"], results["ours"]
            print(f"ratio (ijson / ours): time {r['seconds'] / o['seconds']:.2f}x, "
                  f"peak RSS {r['peak_rss_mb'] / o['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
