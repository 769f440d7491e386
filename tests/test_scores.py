"""Score import: streaming JSON parser vs json.load, CSV, and rejection of bad score files."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genpromp.data.indexing import IMAGE_SCHEMA, CLASS_SCHEMA
from genpromp.data.scores import collect_scores, import_scores, iter_json_scores, topk_ids
from genpromp.errors import InputError


def _index(tmp_path, ids, n_classes):
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path / "index"
    d.mkdir()
    test = pa.table({"image_id": ids, "path": [i + ".jpg" for i in ids], "label": pa.array([0] * len(ids), pa.int32()),
                     "width": pa.array([10] * len(ids), pa.int32()), "height": pa.array([10] * len(ids), pa.int32()),
                     "boxes": [[[0.0, 0.0, 5.0, 5.0]]] * len(ids)}, schema=IMAGE_SCHEMA)
    pq.write_table(test, d / "test.parquet")
    classes = pa.table({"class_id": pa.array(range(n_classes), pa.int32()), "name": [f"c{i}" for i in range(n_classes)],
                        "synonyms": [f"c{i}" for i in range(n_classes)], "wnid": [""] * n_classes,
                        "meta_token": ["x"] * n_classes, "concept_token": [f"<t-{i}>" for i in range(n_classes)],
                        "kept": [True] * n_classes}, schema=CLASS_SCHEMA)
    pq.write_table(classes, d / "classes.parquet")
    return d


def test_streaming_parser_equals_json_load(tmp_path):
    rng = np.random.default_rng(0)
    data = {f"n0/{i}" + (".JPEG" if i % 3 == 0 else ""): {"pred_scores": rng.normal(size=7).tolist()} for i in range(50)}
    data['we"ird\\key/ü'] = {"pred_scores": [1e-30, -2.5, 3, 0, 1, 2, 3]}
    data["slow"] = {"other": [1, 2], "pred_scores": [1, 2, 3, 4, 5, 6, 7]}     # non-canonical entry
    for indent in (None, 2):
        path = tmp_path / f"s{indent}.json"
        path.write_text(json.dumps(data, indent=indent, ensure_ascii=False))
        for chunk in (3, 64, 1 << 20):                # entries straddle chunk boundaries
            got = {k: v for k, v, _ in iter_json_scores(path, chunk_bytes=chunk)}
            assert list(got) == list(data)
            for k in data:
                assert np.array_equal(got[k], np.array(data[k]["pred_scores"], np.float64))


def test_topk_matches_reference():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(20, 12)).astype(np.float32)
    s[0, :] = 1.0                                       # ties: lower ids first
    top = topk_ids(s)
    ref = np.array([sorted(range(12), key=lambda c: (-s[i, c], c))[:5] for i in range(20)])
    assert np.array_equal(top, ref) and top.dtype == np.int32


def test_json_import(tmp_path, caplog):
    index = _index(tmp_path, ["001.A/a_1", "n01/x_2"], 3)
    src = tmp_path / "s.json"
    src.write_text(json.dumps({"001.A/a_1.jpg": {"pred_scores": [0.1, 0.7, 0.2]},
                               "n01/x_2": {"pred_scores": [3, 1, 2]},
                               "unknown/img": {"pred_scores": [1, 2, 3]}}))
    out = tmp_path / "scores" / "m.parquet"
    with caplog.at_level(logging.WARNING):
        import_scores(src, index, out)
    assert "unknown/img" in caplog.text and "1 entries" in caplog.text
    df = pd.read_parquet(out)
    assert df["image_id"].tolist() == ["001.A/a_1", "n01/x_2"]
    assert df["top5_ids"][0].tolist() == [1, 2, 0] and df["top5_ids"][1].tolist() == [0, 2, 1]
    assert np.allclose(df["top5_scores"][0], [0.7, 0.2, 0.1])
    assert np.allclose(df["scores"][1], [3, 1, 2]) and df["scores"][1].dtype == np.float32


def test_csv_import(tmp_path):
    index = _index(tmp_path, ["a/1", "b/2"], 6)
    src = tmp_path / "s.csv"
    src.write_text("image_id,s0,s1,s2,s3,s4,s5\nb/2.png,0,1,2,3,4,5\na/1,6,5,4,3,2,1\n")
    import_scores(src, index, tmp_path / "o.parquet")
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert df["top5_ids"][0].tolist() == [0, 1, 2, 3, 4] and df["top5_ids"][1].tolist() == [5, 4, 3, 2, 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,s0,s1,s2,s3,s4,s5\na/1,6,5,4,3,2,1\nb/2,0,1,x,3,4,5\n")
    with pytest.raises(InputError, match="b/2") as err:
        import_scores(bad, index, tmp_path / "o2.parquet")
    assert err.value.line == 3 and not (tmp_path / "o2.parquet").exists()


BAD_JSON = [
    ("missing image", '{"a/1": {"pred_scores": [1, 2, 3]}}', "no scores for 1 test images: 'b/2'"),
    ("wrong count", '{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2": {"pred_scores": [1, 2]}}', r"b/2 \(2 scores, expected 3\)"),
    ("NaN", '{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2": {"pred_scores": [1, NaN, 2]}}', "b/2 .NaN"),
    ("trailing comma", '{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2": {"pred_scores": [1, 2, 3,]}}', "b/2 .unparsable"),
    ("garbage", '{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2": {"pred_scores": [1, 2, 3}}', "malformed or truncated"),
    ("truncated", '{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2": {"pred_', "malformed or truncated"),
    ("duplicate", '{"a/1": {"pred_scores": [1, 2, 3]},\n"a/1.jpg": {"pred_scores": [1, 2, 3]}}', "twice"),
    ("not an object", '[1, 2]', "expected a JSON object"),
]


@pytest.mark.parametrize("what, text, pattern", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json(tmp_path, what, text, pattern):
    index = _index(tmp_path, ["a/1", "b/2"], 3)
    src = tmp_path / "s.json"
    src.write_text(text)
    out = tmp_path / "o.parquet"
    with pytest.raises(InputError, match=pattern) as err:
        import_scores(src, index, out)
    assert err.value.path == str(src)
    if what in ("wrong count", "NaN", "garbage", "duplicate", "trailing comma"):
        assert err.value.line == 2
    assert not out.exists() and not list(tmp_path.glob(".o.parquet*"))


def test_missing_summary_lists_first_few_and_count(tmp_path):
    ids = [f"img/{i}" for i in range(20)]
    with pytest.raises(InputError, match=r"no scores for 20 test images: 'img/0'.*\(20 in all\)"):
        collect_scores(iter([]), ids, 3, "x.json")


def test_topk_with_many_ties_matches_stable_argsort():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 3, (200, 9)).astype(np.float32)
    assert np.array_equal(topk_ids(s), np.argsort(-s, axis=1, kind="stable")[:, :5])


def test_cli_help_lists_options():
    import argparse
    from genpromp.data import indexing, scores
    from genpromp.demo import classifier
    from genpromp.demo import world as synth
    parser = argparse.ArgumentParser(prog="genpromp")
    sub = parser.add_subparsers(dest="command")
    for mod in (synth, indexing, scores, classifier):
        mod.register_cli(sub)
    for cmd, opt in (("demo-world", "--synset-mapping"), ("index", "--verify"), ("import-scores", "--format"),
                     ("train-classifier", "--epochs")):
        text = sub.choices[cmd].format_help()
        assert opt in text
